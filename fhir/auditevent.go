package fhir

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/resource"
)

// AuditReader reads the audit trail (see store.Audit for the contract).
// AuditEvent returns a *treatment.Error of kind not_found for an unknown id.
type AuditReader interface {
	AuditEvents(ctx context.Context, f audit.Filter) (audit.Page, error)
	AuditEvent(ctx context.Context, id string) (audit.Record, error)
}

// WithAudit serves the audit trail at /AuditEvent: read and search, from
// the AuditEvent JSON each record was rendered to when it was appended.
// Call it before Register, and set Options.Audit so the
// CapabilityStatement lists AuditEvent.
func (s *Server) WithAudit(a AuditReader) *Server {
	s.audit = a
	return s
}

const (
	auditEventType    = "AuditEvent"
	auditDefaultCount = 50
)

// Code systems of the AuditEvent elements searched by token.
const (
	sysAuditEventType  = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	sysDICOM           = "http://dicom.nema.org/resources/ontology/DCM"
	sysInteraction     = "http://hl7.org/fhir/restful-interaction"
	sysAuditOutcome    = "http://hl7.org/fhir/audit-event-outcome"                   // R4
	sysAuditOutcomeTHO = "http://terminology.hl7.org/CodeSystem/audit-event-outcome" // its later home
)

// auditTypeSystems are the event types and the code system of each.
var auditTypeSystems = map[audit.Type]string{
	audit.TypeRest:                sysAuditEventType,
	audit.TypeApplicationActivity: sysDICOM,
	audit.TypeAuditLogUsed:        sysDICOM,
	audit.TypeSecurityAlert:       sysDICOM,
	audit.TypeUserAuthentication:  sysDICOM,
}

// auditParams are the AuditEvent search parameters (R4 names and types);
// the CapabilityStatement is generated from them.
var auditParams = []resource.Param{
	{Name: "date", Type: resource.TypeDate, Doc: "When the event was recorded (AuditEvent.recorded). " +
		"Prefixes eq, ge, gt, le, lt; repeat the parameter for a range"},
	{Name: "agent", Type: resource.TypeReference, Doc: "Who asked: a client id, or " + audit.ClientSystem + "|<client id>, or " +
		audit.EndpointSystem + "|<endpoint id> for the EHR endpoint of a sync event (also as agent:identifier). " +
		"Agents are identified by identifier, so literal references are not supported. One value"},
	{Name: "entity", Type: resource.TypeReference, Targets: resource.Types, Doc: "A resource the event concerns, any version " +
		"(Type/id or an absolute URL ending in Type/id), or with entity:identifier a non-FHIR object such as client:<id>. One value"},
	{Name: "patient", Type: resource.TypeReference, Targets: []string{"Patient"}, Doc: "The patient whose data the event concerns " +
		"(id, Patient/id or an absolute URL ending in Patient/id). One value"},
	{Name: "type", Type: resource.TypeToken, Doc: "Event type: code or system|code (" + sysAuditEventType + " rest; " +
		sysDICOM + " 110100, 110101, 110113, 110114); comma-separated values are ORed"},
	{Name: "subtype", Type: resource.TypeToken, Doc: "What happened: code or system|code (" + sysInteraction + " read, vread, " +
		"history-instance, search-type, create, update, delete; " + audit.SubtypeSystem + " for kapfhir's operations); " +
		"comma-separated values are ORed"},
	{Name: "outcome", Type: resource.TypeToken, Doc: "0 (success), 4, 8 or 12 (minor, serious, major failure); " +
		"comma-separated values are ORed"},
}

// auditResultParams are the result parameters an AuditEvent search takes.
var auditResultParams = map[string]bool{
	"_count": true, "_sort": true, "_summary": true, "_format": true, "_pretty": true, "_cursor": true,
}

func (s *Server) registerAudit(g *echo.Group) {
	g.GET("/"+auditEventType, s.auditSearchGet)
	g.GET("/"+auditEventType+"/_search", s.auditSearchGet)
	g.POST("/"+auditEventType+"/_search", s.auditSearchPost)
	g.GET("/"+auditEventType+"/:id", s.auditRead)
	g.GET("/"+auditEventType+"/:id/_history", s.auditNoHistory)
	g.GET("/"+auditEventType+"/:id/_history/:vid", s.auditNoHistory)
}

// auditRead serves one AuditEvent as it was rendered when appended.
func (s *Server) auditRead(c echo.Context) error {
	if err := negotiate(c.Request(), c.QueryParams()["_format"]); err != nil {
		return err
	}
	id := c.Param("id")
	if !resource.ValidID(id) {
		return InvalidParam("id", "a resource id is 1 to 64 letters, digits, '-' or '.'")
	}
	r, err := s.audit.AuditEvent(c.Request().Context(), id)
	if err != nil {
		return fmt.Errorf("fhir: read AuditEvent/%s: %w", id, err)
	}
	if len(bytes.TrimSpace(r.JSON)) == 0 {
		return fmt.Errorf("fhir: read AuditEvent/%s: the record has no rendered AuditEvent", id)
	}
	h := c.Response().Header()
	h.Set(echo.HeaderLastModified, r.Time.UTC().Format(http.TimeFormat))
	h.Set("ETag", etag(1))
	return c.Blob(http.StatusOK, contentType, r.JSON)
}

// auditNoHistory answers vread and history: an AuditEvent has exactly one
// version, read at AuditEvent/[id]. No method is allowed at these paths.
func (s *Server) auditNoHistory(c echo.Context) error {
	c.Response().Header().Set(echo.HeaderAllow, "")
	return &Error{status: http.StatusMethodNotAllowed, issues: []issue{{
		code:        c4pb.IssueTypeCode_NOT_SUPPORTED,
		diagnostics: "AuditEvents are immutable and have one version: vread and history are not supported; read AuditEvent/[id]",
	}}}
}

func (s *Server) auditSearchGet(c echo.Context) error {
	// Parsed here, not with Echo's QueryParams, which drops what it cannot
	// decode and would widen the search.
	vals, err := url.ParseQuery(c.Request().URL.RawQuery)
	if err != nil {
		return InvalidParam("", "the query string cannot be parsed (bad %-escape or ';')")
	}
	return s.auditSearch(c, vals)
}

// auditSearchPost is POST AuditEvent/_search with a form body (parameters may
// also be in the URL), as searchPost for the other types.
func (s *Server) auditSearchPost(c echo.Context) error {
	form, err := searchForm(c.Request())
	if err != nil {
		return err
	}
	return s.auditSearch(c, form)
}

func (s *Server) auditSearch(c echo.Context, vals url.Values) error {
	req := c.Request()
	if err := negotiate(req, vals["_format"]); err != nil {
		return err
	}
	as, err := parseAuditSearch(vals, lenient(req))
	if err != nil {
		return err
	}
	var page audit.Page
	if !as.empty {
		if page, err = s.audit.AuditEvents(req.Context(), as.f); err != nil {
			return fmt.Errorf("fhir: search AuditEvent: %w", err)
		}
	}
	base := s.baseURL(c)
	selfQ := maps.Clone(as.link)
	if as.cursor != "" {
		selfQ.Set("_cursor", as.cursor)
	}
	self := base + "/" + auditEventType + "?" + selfQ.Encode()
	next := ""
	if page.Next > 0 {
		nextQ := maps.Clone(as.link)
		nextQ.Set("_cursor", encodeAuditCursor(page.Next, as.f.Oldest))
		next = base + "/" + auditEventType + "?" + nextQ.Encode()
	}
	// The store counts nothing, so the total is known only when this page
	// is the whole result.
	total := -1
	if as.cursor == "" && next == "" {
		total = len(page.Records)
	}
	b, err := auditBundle(base, page.Records, total, self, next, s.now())
	if err != nil {
		return fmt.Errorf("fhir: search AuditEvent: %w", err)
	}
	return c.Blob(http.StatusOK, contentType, b)
}

// auditSearchRequest is a parsed, validated AuditEvent search.
type auditSearchRequest struct {
	f audit.Filter
	// empty: the filters cannot match anything.
	empty bool
	// link is the normalized query for the self and next links, without _cursor.
	link url.Values
	// cursor is the _cursor given, "" on the first page.
	cursor string
}

// parseAuditSearch validates the parameters of an AuditEvent search and
// builds the filter, reporting every problem at once, with the conventions
// of parseSearch: unknown parameters are errors unless lenient; repeated
// parameters are ANDed, comma-separated values ORed; messages name
// parameters and never echo values.
func parseAuditSearch(vals url.Values, lenient bool) (auditSearchRequest, error) {
	as := auditSearchRequest{f: audit.Filter{Limit: auditDefaultCount}, link: url.Values{}}
	var p problems
	var types map[audit.Type]bool // nil: no filter
	var subtypes map[audit.Subtype]bool
	var outcomes map[audit.Outcome]bool
	agentSeen, entitySeen := false, false
	for _, key := range slices.Sorted(maps.Keys(vals)) {
		vs := nonEmpty(vals[key])
		if len(vs) == 0 {
			continue // FHIR: a parameter without a value is ignored
		}
		name, mod, hasMod := strings.Cut(key, ":")
		known := auditResultParams[name] || slices.ContainsFunc(auditParams, func(ap resource.Param) bool { return ap.Name == name })
		switch {
		case !known && lenient:
			continue
		case !known:
			p.unsupported(key, fmt.Sprintf("unknown search parameter %q for AuditEvent; see /metadata (or send Prefer: handling=lenient to ignore it)", name))
			continue
		case hasMod && !(mod == "identifier" && (name == "agent" || name == "entity")):
			p.unsupported(key, fmt.Sprintf("the search modifier %q is not supported", ":"+mod))
			continue
		}
		once := func() bool {
			if len(vs) > 1 {
				p.invalid(key, key+" may be given only once")
				return false
			}
			return true
		}
		// one is the single value of a parameter the filter holds one of.
		one := func(seen *bool) (string, bool) {
			if !once() {
				return "", false
			}
			if *seen {
				p.unsupported(key, name+" and "+name+":identifier cannot be combined")
				return "", false
			}
			*seen = true
			if len(splitEscaped(vs[0], ',')) > 1 {
				p.unsupported(key, name+" takes one value (comma-separated values are not supported)")
				return "", false
			}
			return vs[0], true
		}
		linked := true
		switch name {
		case "_format":
			linked = false // negotiated before parsing; not part of the links
		case "_pretty":
			for _, v := range vs {
				if v != "true" && v != "false" {
					p.invalid(key, "_pretty must be true or false")
				}
			}
			linked = false
		case "_count":
			linked = false // always set below
			if !once() {
				continue
			}
			n, err := strconv.Atoi(vs[0])
			if err != nil || n < 1 {
				p.invalid(key, "_count must be a positive integer (the audit trail has no totals, so 0 is not supported)")
				continue
			}
			as.f.Limit = min(n, maxCount)
		case "_sort":
			if !once() {
				continue
			}
			switch vs[0] {
			case "-date":
			case "date":
				as.f.Oldest = true
			default:
				p.unsupported(key, "_sort supports -date (newest first, the default) and date (oldest first)")
				continue
			}
		case "_summary":
			if !once() {
				continue
			}
			if vs[0] != "false" {
				p.unsupported(key, "only _summary=false is supported for AuditEvent (the audit trail has no totals)")
				continue
			}
		case "_cursor":
			linked = false // added per link
			if once() {
				as.cursor = vs[0]
			}
		case "date":
			for _, v := range vs {
				d, ok := parseDateFilter(&p, key, name, v)
				if !ok {
					continue
				}
				if !narrowTime(&as.f, d) {
					p.unsupported(key, "the date prefix ne is not supported for AuditEvent; use eq, lt, le, gt or ge")
				}
			}
		case "agent":
			v, ok := one(&agentSeen)
			if !ok {
				continue
			}
			client, endpoint, msg := parseAgent(v)
			if msg != "" {
				p.invalid(key, msg)
				continue
			}
			as.f.ClientID, as.f.EndpointID = client, endpoint
		case "entity":
			v, ok := one(&entitySeen)
			if !ok {
				continue
			}
			if !hasMod {
				param, _ := auditParam(name)
				ref, msg := parseReference(param, unescape(v))
				if msg != "" {
					p.invalid(key, msg)
					continue
				}
				as.f.Entity = ref
				break
			}
			tv, ok := parseToken(v)
			if !ok || tv.Code == "" {
				p.invalid(key, "entity:identifier values are an identifier value (kapfhir's non-FHIR entities have no system)")
				continue
			}
			if !tv.AnySystem && tv.System != "" {
				as.empty = true // kapfhir's entity identifiers carry no system
			}
			as.f.Entity = tv.Code
		case "patient":
			if !once() {
				continue
			}
			if len(splitEscaped(vs[0], ',')) > 1 {
				p.unsupported(key, "patient takes one value (comma-separated values are not supported)")
				continue
			}
			param, _ := auditParam(name)
			ref, msg := parseReference(param, unescape(vs[0]))
			if msg != "" {
				p.invalid(key, msg)
				continue
			}
			as.f.PatientID = strings.TrimPrefix(ref, "Patient/")
		case "type":
			for _, v := range vs {
				if set, ok := auditTokenSet(&p, key, v, matchType); ok {
					types = intersect(types, set)
				}
			}
		case "subtype":
			for _, v := range vs {
				if set, ok := auditTokenSet(&p, key, v, matchSubtype); ok {
					subtypes = intersect(subtypes, set)
				}
			}
		case "outcome":
			for _, v := range vs {
				if set, ok := auditTokenSet(&p, key, v, matchOutcome); ok {
					outcomes = intersect(outcomes, set)
				}
			}
		}
		if linked {
			for _, v := range vs {
				as.link.Add(key, v)
			}
		}
	}
	if as.cursor != "" {
		seq, err := decodeAuditCursor(as.cursor, as.f.Oldest)
		if err != nil {
			p.invalid("_cursor", "the _cursor is not valid for this search; follow the next link as given")
		} else {
			as.f.Cursor = seq
		}
	}
	if err := p.err(); err != nil {
		return auditSearchRequest{}, err
	}
	as.link.Set("_count", strconv.Itoa(as.f.Limit))
	if types != nil {
		as.f.Types = slices.Sorted(maps.Keys(types))
		as.empty = as.empty || len(types) == 0
	}
	if subtypes != nil {
		as.f.Subtypes = slices.Sorted(maps.Keys(subtypes))
		as.empty = as.empty || len(subtypes) == 0
	}
	if outcomes != nil {
		as.f.Outcomes = slices.Sorted(maps.Keys(outcomes))
		as.empty = as.empty || len(outcomes) == 0
	}
	if !as.f.From.IsZero() && !as.f.To.IsZero() && !as.f.From.Before(as.f.To) {
		as.empty = true
	}
	return as, nil
}

func auditParam(name string) (resource.Param, bool) {
	i := slices.IndexFunc(auditParams, func(p resource.Param) bool { return p.Name == name })
	if i < 0 {
		return resource.Param{}, false
	}
	return auditParams[i], true
}

// narrowTime narrows the filter's [From, To) by a date condition on the
// recording time; false for a prefix it cannot express (ne).
func narrowTime(f *audit.Filter, d resource.DateFilter) bool {
	from := func(t time.Time) {
		if f.From.IsZero() || t.After(f.From) {
			f.From = t
		}
	}
	to := func(t time.Time) {
		if f.To.IsZero() || t.Before(f.To) {
			f.To = t
		}
	}
	switch d.Prefix {
	case resource.EQ:
		from(d.Lo)
		to(d.Hi)
	case resource.GE:
		from(d.Lo)
	case resource.GT:
		from(d.Hi)
	case resource.LE:
		to(d.Hi)
	case resource.LT:
		to(d.Lo)
	default:
		return false
	}
	return true
}

// parseAgent reads an agent value: a client id, or system|value with the
// client or the endpoint identifier system. A non-empty message says what
// is wrong.
func parseAgent(v string) (client, endpoint, msg string) {
	const usage = "agent values are a client id, " + audit.ClientSystem + "|<client id> or " + audit.EndpointSystem + "|<endpoint id>"
	parts := splitEscaped(v, '|')
	switch len(parts) {
	case 1:
		client = unescape(parts[0])
		if strings.Contains(client, "/") {
			return "", "", usage + " (agents are identified by identifier, not by reference)"
		}
	case 2:
		val := unescape(parts[1])
		switch unescape(parts[0]) {
		case audit.ClientSystem:
			client = val
		case audit.EndpointSystem:
			endpoint = val
		default:
			return "", "", usage
		}
	default:
		return "", "", usage
	}
	if client == "" && endpoint == "" {
		return "", "", usage
	}
	return client, endpoint, ""
}

// auditTokenSet parses one value of a token parameter (comma = OR) into
// the set of values it matches. match resolves one alternative: the value,
// whether it matches, or a message saying why the code is invalid. A known
// code in another system matches nothing.
func auditTokenSet[T comparable](p *problems, key, v string, match func(tv resource.TokenValue) (T, bool, string)) (map[T]bool, bool) {
	set := map[T]bool{}
	for _, part := range splitEscaped(v, ',') {
		tv, ok := parseToken(part)
		if !ok || tv.Code == "" {
			p.invalid(key, key+" values are [system]|code or code")
			return nil, false
		}
		val, matches, msg := match(tv)
		if msg != "" {
			p.invalid(key, msg)
			return nil, false
		}
		if matches {
			set[val] = true
		}
	}
	return set, true
}

// matchType resolves a type token; an unknown code matches nothing.
func matchType(tv resource.TokenValue) (audit.Type, bool, string) {
	t := audit.Type(tv.Code)
	sys, known := auditTypeSystems[t]
	return t, known && (tv.AnySystem || tv.System == sys), ""
}

// matchSubtype resolves a subtype token; an unknown code matches nothing.
func matchSubtype(tv resource.TokenValue) (audit.Subtype, bool, string) {
	s := audit.Subtype(tv.Code)
	sys := audit.SubtypeSystem
	if s.Restful() {
		sys = sysInteraction
	}
	return s, s.Known() && (tv.AnySystem || tv.System == sys), ""
}

// matchOutcome resolves an outcome token: its codes are a closed set
// (AuditEvent.outcome has a required binding), so others are invalid.
func matchOutcome(tv resource.TokenValue) (audit.Outcome, bool, string) {
	for _, o := range []audit.Outcome{audit.Success, audit.MinorFailure, audit.SeriousFailure, audit.MajorFailure} {
		if tv.Code == strconv.Itoa(int(o)) {
			return o, tv.AnySystem || tv.System == sysAuditOutcome || tv.System == sysAuditOutcomeTHO, ""
		}
	}
	return 0, false, "outcome values are 0, 4, 8 or 12"
}

// intersect ANDs a repeated parameter's sets (nil: not given yet).
func intersect[T comparable](acc, set map[T]bool) map[T]bool {
	if acc == nil {
		return set
	}
	maps.DeleteFunc(acc, func(k T, _ bool) bool { return !set[k] })
	return acc
}

// auditCursorVersion prefixes the audit cursor so its encoding can change.
const auditCursorVersion = "ae1"

// encodeAuditCursor encodes the seq a listing continues after, bound to its
// direction, as an opaque base64url token.
func encodeAuditCursor(seq int64, oldest bool) string {
	dir := "d"
	if oldest {
		dir = "a"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(auditCursorVersion + "|" + dir + "|" + strconv.FormatInt(seq, 10)))
}

// decodeAuditCursor decodes a cursor made by encodeAuditCursor for a
// listing in the same direction.
func decodeAuditCursor(s string, oldest bool) (int64, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0, fmt.Errorf("cursor: %w", err)
	}
	parts := strings.Split(string(raw), "|")
	if len(parts) != 3 || parts[0] != auditCursorVersion {
		return 0, fmt.Errorf("cursor: unknown format")
	}
	dir := "d"
	if oldest {
		dir = "a"
	}
	if parts[1] != dir {
		return 0, fmt.Errorf("cursor: made for another sort")
	}
	seq, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || seq <= 0 {
		return 0, fmt.Errorf("cursor: bad position")
	}
	return seq, nil
}

// auditBundle renders a page of audit records as a searchset Bundle, the
// stored AuditEvent bytes spliced in. total < 0 leaves Bundle.total out.
func auditBundle(base string, recs []audit.Record, total int, self, next string, now time.Time) ([]byte, error) {
	b := bundleShell(c4pb.BundleTypeCode_SEARCHSET, now)
	if total >= 0 {
		b.Total = &d4pb.UnsignedInt{Value: uint32(total)}
	}
	b.Link = []*bcrpb.Bundle_Link{link("self", self)}
	if next != "" {
		b.Link = append(b.Link, link("next", next))
	}
	entries := make([]entry, 0, len(recs))
	for _, r := range recs {
		if len(bytes.TrimSpace(r.JSON)) == 0 {
			return nil, fmt.Errorf("audit record %d has no rendered AuditEvent", r.Seq)
		}
		entries = append(entries, entry{
			shell: &bcrpb.Bundle_Entry{
				FullUrl: &d4pb.Uri{Value: base + "/" + auditEventType + "/" + r.ID},
				Search:  &bcrpb.Bundle_Entry_Search{Mode: &bcrpb.Bundle_Entry_Search_ModeCode{Value: c4pb.SearchEntryModeCode_MATCH}},
			},
			resource: r.JSON,
		})
	}
	return renderBundle(b, entries)
}
