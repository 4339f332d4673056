package audit

import (
	"fmt"
	"net"
	"slices"
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	aepb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/audit_event_go_proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
)

// Code systems the rendering uses (each code below is one BALP or the FHIR
// R4 specification uses).
const (
	sysEventType   = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	sysDICOM       = "http://dicom.nema.org/resources/ontology/DCM"
	sysInteraction = "http://hl7.org/fhir/restful-interaction"
	sysEntityType  = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	sysObjectRole  = "http://terminology.hl7.org/CodeSystem/object-role"
	sysProvenance  = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
	sysSecRole     = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
)

var typeDisplay = map[Type]string{
	TypeRest:                "RESTful Operation",
	TypeApplicationActivity: "Application Activity",
	TypeAuditLogUsed:        "Audit Log Used",
	TypeSecurityAlert:       "Security Alert",
	TypeUserAuthentication:  "User Authentication",
}

var subtypeDisplay = map[Subtype]string{
	TokenIssued:   "Access token issued",
	TokenRefused:  "Access token refused",
	ConfigChange:  "Configuration changed",
	ClientChange:  "API client changed",
	KeyChange:     "Signing key changed",
	OutboundWrite: "Resource written to an EHR",
	InboundPoll:   "EHR polled for changes",
	Replay:        "Sync work replayed",
	Prune:         "Audit records pruned",
}

var roleDisplay = map[EntityRole]string{
	RoleDomainResource:   "Domain Resource",
	RoleSecurityResource: "Security Resource",
	RoleQuery:            "Query",
}

// Agent types (AuditEvent.agent.type). Functions, not shared messages, so
// a caller may change what Build returns.
func agentSource() *d4pb.Coding      { return coding(sysDICOM, "110153", "Source Role ID") }
func agentDestination() *d4pb.Coding { return coding(sysDICOM, "110152", "Destination Role ID") }
func agentApplication() *d4pb.Coding { return coding(sysDICOM, "110150", "Application") }
func agentCustodian() *d4pb.Coding   { return coding(sysProvenance, "custodian", "Custodian") }
func agentAuthServer() *d4pb.Coding  { return coding(sysSecRole, "authserver", "authorization server") }

func entityPerson() *d4pb.Coding { return coding(sysEntityType, "1", "Person") }
func entitySystem() *d4pb.Coding { return coding(sysEntityType, "2", "System Object") }
func rolePatient() *d4pb.Coding  { return coding(sysObjectRole, "1", "Patient") }

var actions = map[Action]c4pb.AuditEventActionCode_Value{
	ActionCreate:  c4pb.AuditEventActionCode_C,
	ActionRead:    c4pb.AuditEventActionCode_R,
	ActionUpdate:  c4pb.AuditEventActionCode_U,
	ActionDelete:  c4pb.AuditEventActionCode_D,
	ActionExecute: c4pb.AuditEventActionCode_E,
}

var outcomes = map[Outcome]c4pb.AuditEventOutcomeCode_Value{
	Success:        c4pb.AuditEventOutcomeCode_SUCCESS,
	MinorFailure:   c4pb.AuditEventOutcomeCode_MINOR_FAILURE,
	SeriousFailure: c4pb.AuditEventOutcomeCode_SERIOUS_FAILURE,
	MajorFailure:   c4pb.AuditEventOutcomeCode_MAJOR_FAILURE,
}

// Build renders a record (as Prepare returns it, with its ID) as an R4
// AuditEvent shaped after IHE BALP: the requestor agent (and, for REST and
// token events, kapfhir as the server agent; for outbound writes and
// inbound polls, the EHR), source.observer the kapfhir installation
// source, the patient entity (Person, Patient), data entities (System
// Object, Domain Resource), a query entity (role Query, the raw query
// base64), and the detail on an entity of its own.
func Build(r Record, source string) (*aepb.AuditEvent, error) {
	action, ok := actions[r.Action]
	if !ok {
		return nil, fmt.Errorf("audit: build: unknown action %q", r.Action)
	}
	outcome, ok := outcomes[r.Outcome]
	if !ok {
		return nil, fmt.Errorf("audit: build: unknown outcome %d", r.Outcome)
	}
	typ, ok := typeDisplay[r.Type]
	if !ok {
		return nil, fmt.Errorf("audit: build: unknown type %q", r.Type)
	}
	if !r.Subtype.Known() {
		return nil, fmt.Errorf("audit: build: unknown subtype %q", r.Subtype)
	}
	ae := &aepb.AuditEvent{
		Type:     coding(typeSystem(r.Type), string(r.Type), typ),
		Subtype:  []*d4pb.Coding{subtypeCoding(r.Subtype)},
		Action:   &aepb.AuditEvent_ActionCode{Value: action},
		Recorded: instant(r.Time),
		Outcome:  &aepb.AuditEvent_OutcomeCode{Value: outcome},
		Agent:    agents(r, source),
		Source:   &aepb.AuditEvent_Source{Observer: installation(source)},
		Entity:   entities(r),
	}
	if r.ID != "" {
		ae.Id = &d4pb.Id{Value: r.ID}
	}
	if r.OutcomeDesc != "" {
		ae.OutcomeDesc = str(r.OutcomeDesc)
	}
	return ae, nil
}

// Render is the AuditEvent JSON of a record: Build(r, r.Source) through fhirjson.
func Render(r Record) ([]byte, error) {
	ae, err := Build(r, r.Source)
	if err != nil {
		return nil, err
	}
	b, err := fhirjson.Marshal(ae)
	if err != nil {
		return nil, fmt.Errorf("audit: render: %w", err)
	}
	return b, nil
}

func typeSystem(t Type) string {
	if t == TypeRest {
		return sysEventType
	}
	return sysDICOM
}

func subtypeCoding(s Subtype) *d4pb.Coding {
	if s.Restful() {
		return coding(sysInteraction, string(s), string(s))
	}
	return coding(SubtypeSystem, string(s), subtypeDisplay[s])
}

// agents are the requestor and, where BALP has one, the other party. BALP
// names the side the data flows from the Source: the server for reads, the
// client for searches (its query flows), creates and updates.
func agents(r Record, source string) []*aepb.AuditEvent_Agent {
	requestor := &aepb.AuditEvent_Agent{Requestor: &d4pb.Boolean{Value: true}}
	if r.Agent.ClientID != "" {
		requestor.Who = &d4pb.Reference{Identifier: identifier(ClientSystem, r.Agent.ClientID)}
	}
	if r.Agent.Role != "" {
		requestor.Role = []*d4pb.CodeableConcept{{Text: str(r.Agent.Role)}}
	}
	if r.Agent.Address != "" {
		nt := c4pb.AuditEventAgentNetworkTypeCode_MACHINE_NAME
		if net.ParseIP(r.Agent.Address) != nil {
			nt = c4pb.AuditEventAgentNetworkTypeCode_IP_ADDRESS
		}
		requestor.Network = &aepb.AuditEvent_Agent_Network{
			Address: str(r.Agent.Address),
			Type:    &aepb.AuditEvent_Agent_Network_TypeCode{Value: nt},
		}
	}
	server := func(t *d4pb.Coding) *aepb.AuditEvent_Agent {
		return &aepb.AuditEvent_Agent{Type: concept(t), Who: installation(source), Requestor: &d4pb.Boolean{Value: false}}
	}
	switch r.Subtype {
	case Read, VRead, HistoryInstance:
		requestor.Type = concept(agentDestination())
		return []*aepb.AuditEvent_Agent{requestor, server(agentSource())}
	case SearchType, Create, Update:
		requestor.Type = concept(agentSource())
		return []*aepb.AuditEvent_Agent{requestor, server(agentDestination())}
	case Delete:
		requestor.Type = concept(agentApplication())
		return []*aepb.AuditEvent_Agent{requestor, server(agentCustodian())}
	case TokenIssued, TokenRefused:
		requestor.Type = concept(agentApplication())
		return []*aepb.AuditEvent_Agent{requestor, server(agentAuthServer())}
	case OutboundWrite, InboundPoll:
		requestor.Type = concept(agentSource())
		ehr := &aepb.AuditEvent_Agent{
			Type:      concept(agentDestination()),
			Who:       &d4pb.Reference{Identifier: identifier(EndpointSystem, r.EndpointID)},
			Requestor: &d4pb.Boolean{Value: false},
		}
		return []*aepb.AuditEvent_Agent{requestor, ehr}
	default:
		requestor.Type = concept(agentApplication())
		return []*aepb.AuditEvent_Agent{requestor}
	}
}

func entities(r Record) []*aepb.AuditEvent_Entity {
	var out []*aepb.AuditEvent_Entity
	if r.PatientID != "" {
		out = append(out, &aepb.AuditEvent_Entity{
			What: &d4pb.Reference{Reference: &d4pb.Reference_Uri{Uri: str("Patient/" + r.PatientID)}},
			Type: entityPerson(),
			Role: rolePatient(),
		})
	}
	for _, e := range r.Entities {
		ent := &aepb.AuditEvent_Entity{Type: entitySystem(), Role: coding(sysObjectRole, string(e.Role), roleDisplay[e.Role])}
		switch {
		case e.Ref != "":
			ent.What = &d4pb.Reference{Reference: &d4pb.Reference_Uri{Uri: str(e.Ref)}}
		case e.Identifier != "":
			ent.What = &d4pb.Reference{Identifier: &d4pb.Identifier{Value: str(e.Identifier)}}
		case e.Query != "":
			ent.Query = &d4pb.Base64Binary{Value: []byte(e.Query)}
		}
		out = append(out, ent)
	}
	if len(r.Detail) > 0 {
		keys := make([]string, 0, len(r.Detail))
		for k := range r.Detail {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		ent := &aepb.AuditEvent_Entity{Type: entitySystem()}
		for _, k := range keys {
			ent.Detail = append(ent.Detail, &aepb.AuditEvent_Entity_Detail{
				Type: str(k),
				Value: &aepb.AuditEvent_Entity_Detail_ValueX{
					Choice: &aepb.AuditEvent_Entity_Detail_ValueX_StringValue{StringValue: str(r.Detail[k])},
				},
			})
		}
		out = append(out, ent)
	}
	return out
}

// installation is the reference to the kapfhir installation (a Device).
func installation(source string) *d4pb.Reference {
	return &d4pb.Reference{
		Type:       &d4pb.Uri{Value: "Device"},
		Identifier: identifier(InstallationSystem, source),
		Display:    str("kapfhir"),
	}
}

func identifier(system, value string) *d4pb.Identifier {
	return &d4pb.Identifier{System: &d4pb.Uri{Value: system}, Value: str(value)}
}

func coding(system, code, display string) *d4pb.Coding {
	return &d4pb.Coding{System: &d4pb.Uri{Value: system}, Code: &d4pb.Code{Value: code}, Display: str(display)}
}

func concept(c *d4pb.Coding) *d4pb.CodeableConcept {
	return &d4pb.CodeableConcept{Coding: []*d4pb.Coding{c}}
}

func str(s string) *d4pb.String { return &d4pb.String{Value: s} }

// instant is t in UTC with the precision its fraction needs.
func instant(t time.Time) *d4pb.Instant {
	t = t.UTC()
	p := d4pb.Instant_MICROSECOND
	switch ns := t.Nanosecond(); {
	case ns == 0:
		p = d4pb.Instant_SECOND
	case ns%int(time.Millisecond) == 0:
		p = d4pb.Instant_MILLISECOND
	}
	return &d4pb.Instant{ValueUs: t.UnixMicro(), Timezone: "Z", Precision: p}
}
