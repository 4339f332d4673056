package resource

import "time"

// ParamType is a FHIR search parameter type kapfhir supports.
type ParamType string

// Parameter types.
const (
	TypeToken     ParamType = "token"
	TypeReference ParamType = "reference"
	TypeDate      ParamType = "date"
)

// Param describes one search parameter of one resource type.
type Param struct {
	Name string
	Type ParamType
	// Targets are the resource types a reference parameter may point to.
	Targets []string
	Doc     string
}

// Types lists the resource types kapfhir stores and serves.
var Types = []string{"Patient", "CarePlan", "Appointment", "Observation", "Goal", "PlanDefinition", "Provenance"}

// Params lists, per resource type, the search parameters indexed on write and
// accepted on search (besides _id, _lastUpdated and the result parameters,
// which every type has). The CapabilityStatement is generated from it.
var Params = map[string][]Param{
	"Patient": {
		{Name: "identifier", Type: TypeToken, Doc: "A patient identifier"},
	},
	"CarePlan": {
		{Name: "identifier", Type: TypeToken, Doc: "External ids for this plan"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "Who the care plan is for"},
		{Name: "subject", Type: TypeReference, Targets: []string{"Patient"}, Doc: "Who the care plan is for"},
		{Name: "status", Type: TypeToken, Doc: "draft | active | on-hold | revoked | completed | entered-in-error | unknown"},
		{Name: "category", Type: TypeToken, Doc: "Type of plan"},
		{Name: "date", Type: TypeDate, Doc: "Time period plan covers"},
		{Name: "based-on", Type: TypeReference, Targets: []string{"CarePlan"}, Doc: "Fulfills CarePlan"},
		{Name: "instantiates-canonical", Type: TypeReference, Targets: []string{"PlanDefinition"}, Doc: "Instantiates FHIR protocol or definition"},
		{Name: "activity-reference", Type: TypeReference, Targets: []string{"Appointment"}, Doc: "Activity details defined in specific resource"},
		{Name: "goal", Type: TypeReference, Targets: []string{"Goal"}, Doc: "Desired outcome of plan"},
	},
	"Appointment": {
		{Name: "identifier", Type: TypeToken, Doc: "An Identifier of the Appointment"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "One of the individuals of the appointment is this patient"},
		{Name: "actor", Type: TypeReference, Targets: []string{"Patient"}, Doc: "Any one of the individuals participating in the appointment"},
		{Name: "status", Type: TypeToken, Doc: "The overall status of the appointment"},
		{Name: "date", Type: TypeDate, Doc: "Appointment date/time (start, or the requested period of a proposal)"},
		{Name: "service-type", Type: TypeToken, Doc: "The specific service that is to be performed during this appointment"},
		{Name: "appointment-type", Type: TypeToken, Doc: "The style of appointment or patient that has been booked in the slot"},
		{Name: "supporting-info", Type: TypeReference, Targets: []string{"CarePlan"}, Doc: "Additional information to support the appointment"},
	},
	"Observation": {
		{Name: "identifier", Type: TypeToken, Doc: "The unique id for a particular observation"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "The subject that the observation is about (if patient)"},
		{Name: "subject", Type: TypeReference, Targets: []string{"Patient"}, Doc: "The subject that the observation is about"},
		{Name: "status", Type: TypeToken, Doc: "The status of the observation"},
		{Name: "code", Type: TypeToken, Doc: "The code of the observation type"},
		{Name: "category", Type: TypeToken, Doc: "The classification of the type of observation"},
		{Name: "date", Type: TypeDate, Doc: "Obtained date/time"},
		{Name: "based-on", Type: TypeReference, Targets: []string{"CarePlan"}, Doc: "Reference to the service request"},
	},
	"Goal": {
		{Name: "identifier", Type: TypeToken, Doc: "External Ids for this goal"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"}, Doc: "Who this goal is intended for"},
		{Name: "subject", Type: TypeReference, Targets: []string{"Patient"}, Doc: "Who this goal is intended for"},
		{Name: "lifecycle-status", Type: TypeToken, Doc: "proposed | planned | accepted | active | on-hold | completed | cancelled | entered-in-error | rejected"},
		{Name: "achievement-status", Type: TypeToken, Doc: "in-progress | improving | worsening | no-change | achieved | sustaining | not-achieved | no-progress | not-attainable"},
		{Name: "category", Type: TypeToken, Doc: "E.g. Treatment, dietary, behavioral, etc."},
	},
	"PlanDefinition": {
		{Name: "identifier", Type: TypeToken, Doc: "External identifier for the plan definition"},
		{Name: "url", Type: TypeToken, Doc: "The uri that identifies the plan definition (matched exactly, indexed as a token)"},
		{Name: "status", Type: TypeToken, Doc: "The current status of the plan definition"},
		{Name: "version", Type: TypeToken, Doc: "The business version of the plan definition"},
	},
	"Provenance": {
		{Name: "target", Type: TypeReference, Targets: []string{"Patient", "CarePlan", "Appointment", "Observation", "Goal"},
			Doc: "The resource sent to an EHR, any version sent (its Provenance targets Type/id/_history/n)"},
		{Name: "patient", Type: TypeReference, Targets: []string{"Patient"},
			Doc: "A target that is a Patient (R4: target.where(resolve() is Patient)); for everything sent about a patient, search AuditEvent?patient=&subtype=outbound-write"},
		{Name: "recorded", Type: TypeDate, Doc: "When the EHR acknowledged the write"},
	},
}

// Includes lists the _include values supported: "Type:param" for a reference param.
var Includes = map[string][]string{
	"CarePlan":    {"CarePlan:activity-reference", "CarePlan:patient", "CarePlan:subject", "CarePlan:goal", "CarePlan:based-on", "CarePlan:instantiates-canonical"},
	"Appointment": {"Appointment:patient", "Appointment:supporting-info"},
	"Observation": {"Observation:patient", "Observation:subject", "Observation:based-on"},
	"Goal":        {"Goal:patient", "Goal:subject"},
}

// LookupParam returns the search parameter name of type typ.
func LookupParam(typ, name string) (Param, bool) {
	for _, p := range Params[typ] {
		if p.Name == name {
			return p, true
		}
	}
	return Param{}, false
}

// Prefix is a FHIR comparison prefix for dates.
type Prefix string

// Date prefixes.
const (
	EQ Prefix = "eq"
	NE Prefix = "ne"
	LT Prefix = "lt"
	LE Prefix = "le"
	GT Prefix = "gt"
	GE Prefix = "ge"
)

// TokenValue is one alternative of a token filter. An empty System with
// AnySystem false means "no system" (`|code`); AnySystem means `code`.
// An empty Code means "any code in System" (`system|`).
type TokenValue struct {
	System    string
	AnySystem bool
	Code      string
}

// TokenFilter matches when any of Values matches (comma = OR).
type TokenFilter struct {
	Param  string
	Values []TokenValue
}

// RefFilter matches when the parameter references any of Targets ("Type/id").
type RefFilter struct {
	Param   string
	Targets []string
}

// DateFilter compares the indexed range of Param with [Lo, Hi) (the precision
// of the searched value: 2026 covers the whole year). Param "_lastUpdated"
// compares the version's lastUpdated.
//
// Semantics, with the resource's range [rLo, rHi):
//
//	eq: rLo >= Lo and rHi <= Hi        ne: not eq
//	lt: rLo < Lo                       gt: rHi > Hi
//	le: rLo < Hi                       ge: rHi > Lo
type DateFilter struct {
	Param  string
	Prefix Prefix
	Lo     time.Time
	Hi     time.Time
}

// SortField is what a search orders by. Ties are broken by id, ascending.
type SortField string

// Sort fields.
const (
	SortID          SortField = "_id"
	SortDate        SortField = "date"
	SortLastUpdated SortField = "_lastUpdated"
)

// Cursor is a keyset position: the sort value and id of the last entry of the
// previous page. The fhir package encodes it opaquely in `next` links.
type Cursor struct {
	Time time.Time // for date and _lastUpdated sorts
	ID   string
}

// Query is a search of one resource type. Filters are ANDed.
type Query struct {
	Type   string
	IDs    []string // _id, ORed
	Tokens []TokenFilter
	Refs   []RefFilter
	Dates  []DateFilter

	Sort  SortField
	Desc  bool
	Count int     // page size; 0 means only the total is wanted (_summary=count)
	After *Cursor // keyset position; nil for the first page
}

// Page is one page of search results.
type Page struct {
	Versions []Version
	Total    int     // matches of the whole query, ignoring paging
	Next     *Cursor // nil on the last page
}
