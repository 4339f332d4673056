// Package audit is kapfhir's audit trail: the data model of one audit event
// (Record), its rendering as a FHIR R4 AuditEvent shaped after IHE Basic
// Audit Log Patterns (BALP), and the hash chain that makes the trail tamper
// evident (Canonical, Hash, Verify).
//
// Records are plain data. A store assigns each its place in the chain (Seq,
// ID, PrevHash, Hash); the first time a record is served it renders it
// (Render) and keeps the bytes, which are served as they are at
// /fhir/AuditEvent from then on. No PHI goes into a record's
// free text (OutcomeDesc, Detail): ids only.
package audit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kapfhir/kapfhir/treatment"
)

// Type is the kind of event (AuditEvent.type), by its code: "rest" in
// http://terminology.hl7.org/CodeSystem/audit-event-type, the others in
// DICOM (http://dicom.nema.org/resources/ontology/DCM).
type Type string

// Event types.
const (
	TypeRest                Type = "rest"   // RESTful Operation
	TypeApplicationActivity Type = "110100" // DCM Application Activity
	TypeAuditLogUsed        Type = "110101" // DCM Audit Log Used
	TypeSecurityAlert       Type = "110113" // DCM Security Alert
	TypeUserAuthentication  Type = "110114" // DCM User Authentication
)

// Subtype is what happened (AuditEvent.subtype): a FHIR restful interaction
// (http://hl7.org/fhir/restful-interaction) or one of kapfhir's own
// operations (SubtypeSystem).
type Subtype string

// FHIR restful interactions.
const (
	Read            Subtype = "read"
	VRead           Subtype = "vread"
	HistoryInstance Subtype = "history-instance"
	SearchType      Subtype = "search-type"
	Create          Subtype = "create"
	Update          Subtype = "update"
	Delete          Subtype = "delete"
)

// kapfhir operations (codes of SubtypeSystem).
const (
	TokenIssued   Subtype = "token-issued"   // an access token was issued to a client
	TokenRefused  Subtype = "token-refused"  // a token request was refused
	ConfigChange  Subtype = "config-change"  // a configuration (endpoint, setting) changed
	ClientChange  Subtype = "client-change"  // an API client was created, changed or removed
	KeyChange     Subtype = "key-change"     // a signing key was created or retired
	OutboundWrite Subtype = "outbound-write" // kapfhir wrote a resource to an EHR
	InboundPoll   Subtype = "inbound-poll"   // kapfhir searched an EHR for changes
	Replay        Subtype = "replay"         // an operator replayed sync work
	Prune         Subtype = "prune"          // old audit records were deleted (written by the store only)
)

// Code systems and identifier systems kapfhir defines for its audit events.
const (
	// SubtypeSystem holds kapfhir's own operation codes.
	SubtypeSystem = "https://kapfhir.org/fhir/CodeSystem/audit-subtype"
	// ClientSystem identifies API clients (agent.who.identifier).
	ClientSystem = "https://kapfhir.org/fhir/sid/client"
	// EndpointSystem identifies EHR endpoints (agent.who.identifier).
	EndpointSystem = "https://kapfhir.org/fhir/sid/endpoint"
	// InstallationSystem identifies a kapfhir installation (source.observer).
	InstallationSystem = "https://kapfhir.org/fhir/sid/installation"
)

// subtypeInfo is what a subtype implies.
type subtypeInfo struct {
	rest   bool // a FHIR restful interaction (restful-interaction system)
	typ    Type
	action Action
}

var subtypes = map[Subtype]subtypeInfo{
	Read:            {true, TypeRest, ActionRead},
	VRead:           {true, TypeRest, ActionRead},
	HistoryInstance: {true, TypeRest, ActionRead},
	SearchType:      {true, TypeRest, ActionExecute},
	Create:          {true, TypeRest, ActionCreate},
	Update:          {true, TypeRest, ActionUpdate},
	Delete:          {true, TypeRest, ActionDelete},
	TokenIssued:     {false, TypeUserAuthentication, ActionExecute},
	TokenRefused:    {false, TypeUserAuthentication, ActionExecute},
	ConfigChange:    {false, TypeSecurityAlert, ActionUpdate},
	ClientChange:    {false, TypeSecurityAlert, ActionUpdate},
	KeyChange:       {false, TypeSecurityAlert, ActionUpdate},
	OutboundWrite:   {false, TypeRest, ActionUpdate},
	InboundPoll:     {false, TypeRest, ActionExecute},
	Replay:          {false, TypeApplicationActivity, ActionExecute},
	Prune:           {false, TypeAuditLogUsed, ActionDelete},
}

// Known reports whether s is a subtype this package knows.
func (s Subtype) Known() bool { _, ok := subtypes[s]; return ok }

// Restful reports whether s is a FHIR restful interaction.
func (s Subtype) Restful() bool { return subtypes[s].rest }

// TypeOf is the event type a subtype belongs to ("" for an unknown one).
func TypeOf(s Subtype) Type { return subtypes[s].typ }

// ActionOf is the usual action of a subtype ("" for an unknown one).
func ActionOf(s Subtype) Action { return subtypes[s].action }

// Action is AuditEvent.action.
type Action string

// Actions.
const (
	ActionCreate  Action = "C"
	ActionRead    Action = "R"
	ActionUpdate  Action = "U"
	ActionDelete  Action = "D"
	ActionExecute Action = "E"
)

// Outcome is AuditEvent.outcome
// (http://terminology.hl7.org/CodeSystem/audit-event-outcome).
type Outcome int

// Outcomes.
const (
	Success        Outcome = 0
	MinorFailure   Outcome = 4
	SeriousFailure Outcome = 8
	MajorFailure   Outcome = 12
)

func (o Outcome) valid() bool {
	return o == Success || o == MinorFailure || o == SeriousFailure || o == MajorFailure
}

// EntityRole is an entity's role (http://terminology.hl7.org/CodeSystem/object-role).
type EntityRole string

// Entity roles.
const (
	RoleDomainResource   EntityRole = "4"  // Domain Resource
	RoleSecurityResource EntityRole = "13" // Security Resource
	RoleQuery            EntityRole = "24" // Query
)

// Agent is who did it: the API client (or kapfhir's own actor, e.g.
// "sync") that asked. It is the requestor.
type Agent struct {
	ClientID string
	Role     string // the client's kapfhir role, as text
	Address  string // network address the request came from, optional
}

// Entity is one thing the event touched, given by exactly one of Ref (a
// FHIR reference, "CarePlan/abc" or "CarePlan/abc/_history/3"), Identifier
// (something that is not a FHIR resource: a client id, a key id) or Query
// (the raw query string of a search, rendered base64 as BALP does).
type Entity struct {
	Ref        string `json:"ref,omitempty"`
	Identifier string `json:"identifier,omitempty"`
	Query      string `json:"query,omitempty"`
	// Role is "" for the usual one: Domain Resource for a reference,
	// Security Resource (a passive object such as a client or a key) for
	// an identifier, Query for a query.
	Role EntityRole `json:"role,omitempty"`
}

// Record is one audit event.
type Record struct {
	// Seq is the record's place in the chain, from 1, assigned by the store.
	Seq int64
	// ID is the AuditEvent id, IDFor(Seq), assigned by the store.
	ID string
	// Time is when it happened (AuditEvent.recorded), kept to the microsecond.
	Time time.Time
	// Type is the event type; "" means TypeOf(Subtype).
	Type    Type
	Subtype Subtype
	// Action is "" for ActionOf(Subtype).
	Action      Action
	Outcome     Outcome
	OutcomeDesc string // caller-safe reason of a failure, no PHI
	Agent       Agent
	// PatientID is the patient whose data it concerns, if any.
	PatientID string
	Entities  []Entity
	// EndpointID is the EHR endpoint of an outbound write or inbound poll.
	EndpointID string
	// Detail holds a few small facts (ids, counts), no PHI.
	Detail map[string]string
	// Source is the kapfhir installation that recorded the event
	// (source.observer).
	Source string

	// JSON is the rendered AuditEvent (Render), set by the store when the
	// record is first served; not covered by Hash (Verify renders again).
	JSON []byte
	// PrevHash and Hash link the record into the chain (see Hash), set by the store.
	PrevHash, Hash []byte
}

// Limits on a record's detail.
const (
	maxDetail      = 32
	maxDetailKey   = 64
	maxDetailValue = 1024
)

// Prepare checks a record a caller wants to append and fills its defaults:
// Time in UTC, to the microsecond; Type and Action from the Subtype;
// entity roles. It reports every problem at once as an invalid error.
// The chain fields (Seq, ID, JSON, PrevHash, Hash) are left to the store.
func Prepare(r Record) (Record, error) {
	var p treatment.Problems
	if r.Time.IsZero() {
		p.Add("time", "is required")
	}
	r.Time = r.Time.UTC().Truncate(time.Microsecond)
	if !r.Subtype.Known() {
		p.Addf("subtype", "unknown subtype %q", r.Subtype)
	}
	if r.Type == "" {
		r.Type = TypeOf(r.Subtype)
	} else if !knownType(r.Type) {
		p.Addf("type", "unknown type %q", r.Type)
	}
	if r.Action == "" {
		r.Action = ActionOf(r.Subtype)
	} else if !strings.Contains("CRUDE", string(r.Action)) || len(r.Action) != 1 {
		p.Addf("action", "must be one of C, R, U, D, E")
	}
	if !r.Outcome.valid() {
		p.Add("outcome", "must be 0, 4, 8 or 12")
	}
	if r.Source == "" {
		p.Add("source", "is required")
	}
	if r.Subtype == OutboundWrite || r.Subtype == InboundPoll {
		if r.EndpointID == "" {
			p.Add("endpointId", "is required for an outbound write or inbound poll")
		}
	}
	if len(r.Entities) > 0 {
		es := make([]Entity, len(r.Entities))
		for i, e := range r.Entities {
			field := "entities[" + strconv.Itoa(i) + "]"
			n := 0
			for _, s := range []string{e.Ref, e.Identifier, e.Query} {
				if s != "" {
					n++
				}
			}
			if n != 1 {
				p.Add(field, "needs exactly one of ref, identifier and query")
			}
			if e.Ref != "" && RefKey(e.Ref) == "" {
				p.Add(field+".ref", "must be a relative reference Type/id")
			}
			switch {
			case e.Role == "" && e.Query != "":
				e.Role = RoleQuery
			case e.Role == "" && e.Identifier != "":
				e.Role = RoleSecurityResource
			case e.Role == "":
				e.Role = RoleDomainResource
			case e.Role != RoleDomainResource && e.Role != RoleSecurityResource && e.Role != RoleQuery:
				p.Addf(field+".role", "unknown role %q", e.Role)
			}
			es[i] = e
		}
		r.Entities = es
	}
	if len(r.Detail) > maxDetail {
		p.Addf("detail", "at most %d entries", maxDetail)
	}
	for k, v := range r.Detail {
		if k == "" || len(k) > maxDetailKey || len(v) > maxDetailValue || !utf8.ValidString(k) || !utf8.ValidString(v) {
			p.Addf("detail", "keys are 1 to %d bytes, values at most %d, UTF-8", maxDetailKey, maxDetailValue)
			break
		}
	}
	for _, s := range []string{r.OutcomeDesc, r.Agent.ClientID, r.Agent.Role, r.Agent.Address, r.PatientID, r.EndpointID, r.Source} {
		if !utf8.ValidString(s) {
			p.Add("record", "text must be UTF-8")
			break
		}
	}
	if err := p.Err("invalid audit record"); err != nil {
		return Record{}, err
	}
	return r, nil
}

func knownType(t Type) bool {
	switch t {
	case TypeRest, TypeApplicationActivity, TypeAuditLogUsed, TypeSecurityAlert, TypeUserAuthentication:
		return true
	}
	return false
}

// idPrefix starts every AuditEvent id.
const idPrefix = "ae-"

// IDFor is the AuditEvent id of the record at seq.
func IDFor(seq int64) string { return idPrefix + strconv.FormatInt(seq, 10) }

// SeqOf is the seq of an AuditEvent id made by IDFor; false for any other string.
func SeqOf(id string) (int64, bool) {
	s, ok := strings.CutPrefix(id, idPrefix)
	if !ok || s == "" || s[0] == '0' || s[0] == '+' || s[0] == '-' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// RefKey is the versionless "Type/id" of a relative reference
// ("CarePlan/abc/_history/3" -> "CarePlan/abc"), "" when ref is not one.
// Entity filters match on it.
func RefKey(ref string) string {
	parts := strings.Split(ref, "/")
	switch {
	case len(parts) == 2:
	case len(parts) == 4 && parts[2] == "_history" && parts[3] != "":
	default:
		return ""
	}
	typ, id := parts[0], parts[1]
	if typ == "" || id == "" || typ[0] < 'A' || typ[0] > 'Z' || strings.ContainsAny(ref, ":?#") {
		return ""
	}
	return typ + "/" + id
}

// Keys are the entity keys a record is found by: the RefKey of each
// reference, each identifier, and Patient/<PatientID>; each once.
func (r Record) Keys() []string {
	var out []string
	add := func(k string) {
		for _, o := range out {
			if o == k {
				return
			}
		}
		out = append(out, k)
	}
	if r.PatientID != "" {
		add("Patient/" + r.PatientID)
	}
	for _, e := range r.Entities {
		switch {
		case e.Ref != "":
			if k := RefKey(e.Ref); k != "" {
				add(k)
			}
		case e.Identifier != "":
			add(e.Identifier)
		}
	}
	return out
}

// Filter selects audit records (see the store's AuditEvents). Empty fields
// do not filter; lists match any of their values.
type Filter struct {
	// From and To bound Time: From <= Time < To (zero: unbounded).
	From, To time.Time
	// ClientID is the agent's client id.
	ClientID string
	// Entity is a reference ("CarePlan/abc", any version) or an identifier.
	Entity     string
	PatientID  string
	EndpointID string
	Types      []Type
	Subtypes   []Subtype
	Outcomes   []Outcome
	// Oldest lists oldest first (by Seq); otherwise newest first.
	Oldest bool
	// Cursor continues a listing: records after it in the listing's order
	// (Seq < Cursor newest first, Seq > Cursor oldest first); 0 starts.
	Cursor int64
	// Limit is the page size (default 100, at most 1000).
	Limit int
}

// Page is one page of records.
type Page struct {
	Records []Record
	// Next is the Cursor of the next page; 0 when this is the last.
	Next int64
}

// Head is the end of the chain as the store records it: the last seq and
// its hash (0 and 32 zero bytes for an empty chain).
type Head struct {
	Seq  int64
	Hash []byte
}

// Detail keys of a prune record.
const (
	DetailPruned   = "pruned"    // how many records were deleted
	DetailFirstSeq = "first-seq" // the seq the chain now starts at
	DetailAnchor   = "anchor"    // hex PrevHash of the record at first-seq
	DetailBefore   = "before"    // the prune time bound, RFC 3339
)

// PruneRecord is the record of a prune by the template by (who, when,
// source): pruned records deleted, the chain now starting at firstSeq, whose
// record's PrevHash is anchor.
func PruneRecord(by Record, before time.Time, pruned int, firstSeq int64, anchor []byte) Record {
	r := by
	r.Type, r.Subtype, r.Action, r.Outcome, r.OutcomeDesc = "", Prune, "", Success, ""
	r.Entities, r.PatientID, r.EndpointID = nil, "", ""
	r.Detail = map[string]string{
		DetailPruned:   strconv.Itoa(pruned),
		DetailFirstSeq: strconv.FormatInt(firstSeq, 10),
		DetailAnchor:   fmt.Sprintf("%x", anchor),
		DetailBefore:   before.UTC().Format(time.RFC3339Nano),
	}
	return r
}
