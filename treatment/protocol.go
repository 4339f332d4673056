package treatment

// PlanKind says what part of a programme a protocol or plan describes.
type PlanKind string

// Plan kinds.
const (
	PlanInduction   PlanKind = "induction"
	PlanBooster     PlanKind = "booster"
	PlanMaintenance PlanKind = "maintenance"
)

// Route is how ketamine is given.
type Route string

// Routes.
const (
	RouteIV         Route = "iv"
	RouteIM         Route = "im"
	RouteSublingual Route = "sublingual"
	RouteIntranasal Route = "intranasal"
)

// Indication is the condition a programme treats. The values are kapfhir's
// own short names; mapping turns them into SNOMED CT codes.
type Indication string

// Indications.
const (
	IndicationTRD     Indication = "trd"     // treatment-resistant depression
	IndicationMDD     Indication = "mdd"     // major depressive disorder
	IndicationPTSD    Indication = "ptsd"    // post-traumatic stress disorder
	IndicationAnxiety Indication = "anxiety" // anxiety disorder
)

// IntRange is an inclusive range with a default inside it.
type IntRange struct {
	Min     int `json:"min" yaml:"min"`
	Max     int `json:"max" yaml:"max"`
	Default int `json:"default" yaml:"default"`
}

// Spacing constrains when doses may fall relative to each other.
type Spacing struct {
	// MinDays and MaxDays bound the calendar days between consecutive doses.
	MinDays int `json:"minDays" yaml:"minDays"`
	MaxDays int `json:"maxDays" yaml:"maxDays"`
	// Weekdays, when set, are the only weekdays doses are placed on ("mon".."sun").
	Weekdays []string `json:"weekdays,omitempty" yaml:"weekdays,omitempty"`
	// PerWeekMax caps doses in one ISO week (0 = no cap).
	PerWeekMax int `json:"perWeekMax,omitempty" yaml:"perWeekMax,omitempty"`
	// AllowConsecutive permits doses on consecutive calendar days.
	AllowConsecutive bool `json:"allowConsecutive,omitempty" yaml:"allowConsecutive,omitempty"`
	// MaxSpanDays, when set, is the window all doses must fit in, counted from
	// the first dose's day (6 infusions over 2-3 weeks: 21).
	MaxSpanDays int `json:"maxSpanDays,omitempty" yaml:"maxSpanDays,omitempty"`
}

// Step is a single visit placed relative to the dosing series.
type Step struct {
	Title string `json:"title" yaml:"title"`
	// DaysBefore the first dose (preparation) — the visit moves earlier to an open day.
	DaysBefore int `json:"daysBefore" yaml:"daysBefore"`
	Minutes    int `json:"minutes" yaml:"minutes"`
}

// Integration describes the psychotherapy visits that follow doses.
type Integration struct {
	// AfterEvery dose number N (1 = after every dose, 2 = after every second dose).
	AfterEvery int `json:"afterEvery" yaml:"afterEvery"`
	// OffsetDays after the dose, one visit per entry ([1] or [2, 5]).
	OffsetDays []int `json:"offsetDays" yaml:"offsetDays"`
	Minutes    int   `json:"minutes" yaml:"minutes"`
}

// Reassessment is the visit that closes an induction.
type Reassessment struct {
	MinDays int `json:"minDays" yaml:"minDays"` // after the last dose
	MaxDays int `json:"maxDays" yaml:"maxDays"`
	Minutes int `json:"minutes" yaml:"minutes"`
}

// MeasurementRule says which instrument is measured when.
type MeasurementRule struct {
	Instrument Instrument `json:"instrument" yaml:"instrument"`
	// At is one of: baseline, pre-dose, post-dose, reassessment, after-last-dose.
	At string `json:"at" yaml:"at"`
	// OffsetMinutes after the start of the session ("40 minutes after each infusion")
	// or, for after-last-dose, OffsetDays is used instead.
	OffsetMinutes int `json:"offsetMinutes,omitempty" yaml:"offsetMinutes,omitempty"`
	OffsetDays    int `json:"offsetDays,omitempty" yaml:"offsetDays,omitempty"`
}

// Measurement moments for MeasurementRule.At.
const (
	AtBaseline      = "baseline"
	AtPreDose       = "pre-dose"
	AtPostDose      = "post-dose"
	AtReassessment  = "reassessment"
	AtAfterLastDose = "after-last-dose"
)

// BoosterRule proposes booster sessions inside a window after the induction's last dose.
type BoosterRule struct {
	Count             IntRange `json:"count" yaml:"count"`
	WindowStartMonths int      `json:"windowStartMonths" yaml:"windowStartMonths"`
	WindowEndMonths   int      `json:"windowEndMonths" yaml:"windowEndMonths"`
}

// MaintenanceRule repeats sessions at a cadence until a count or an end date.
type MaintenanceRule struct {
	IntervalDays int `json:"intervalDays,omitempty" yaml:"intervalDays,omitempty"`
	// IntervalMonths is used instead of IntervalDays for monthly cadence (same day of month).
	IntervalMonths int      `json:"intervalMonths,omitempty" yaml:"intervalMonths,omitempty"`
	Count          IntRange `json:"count" yaml:"count"`
}

// RelapseRule proposes a booster when PHQ-9 rises: by RiseBy points above the
// post-induction score, or to Threshold or above.
type RelapseRule struct {
	RiseBy    int `json:"riseBy" yaml:"riseBy"`
	Threshold int `json:"threshold" yaml:"threshold"`
}

// Variant overrides parts of a protocol for one indication.
type Variant struct {
	Doses        *IntRange     `json:"doses,omitempty" yaml:"doses,omitempty"`
	Spacing      *Spacing      `json:"spacing,omitempty" yaml:"spacing,omitempty"`
	Integration  *Integration  `json:"integration,omitempty" yaml:"integration,omitempty"`
	Reassessment *Reassessment `json:"reassessment,omitempty" yaml:"reassessment,omitempty"`
	FollowOn     []string      `json:"followOn,omitempty" yaml:"followOn,omitempty"`
	Note         string        `json:"note,omitempty" yaml:"note,omitempty"`
}

// Protocol is one entry of the catalogue: a declarative description of a
// programme (or of a booster/maintenance plan) that the scheduler turns into sessions.
type Protocol struct {
	ID          string       `json:"id" yaml:"id"`
	Version     string       `json:"version" yaml:"version"`
	Title       string       `json:"title" yaml:"title"`
	Description string       `json:"description" yaml:"description"`
	Indications []Indication `json:"indications" yaml:"indications"`
	// Source says which published practice the protocol models and which
	// parameters are kapfhir's defaults.
	Source string   `json:"source" yaml:"source"`
	Kind   PlanKind `json:"kind" yaml:"kind"`
	Route  Route    `json:"route" yaml:"route"`
	// Routes allowed when a programme asks for another one (Route is the default).
	Routes []Route `json:"routes,omitempty" yaml:"routes,omitempty"`

	Doses       IntRange `json:"doses" yaml:"doses"`
	Spacing     Spacing  `json:"spacing" yaml:"spacing"`
	DoseMinutes int      `json:"doseMinutes" yaml:"doseMinutes"`
	// SupervisedAtHome doses are taken at home under remote supervision.
	SupervisedAtHome bool `json:"supervisedAtHome,omitempty" yaml:"supervisedAtHome,omitempty"`

	Preparation  *Step         `json:"preparation,omitempty" yaml:"preparation,omitempty"`
	Integration  *Integration  `json:"integration,omitempty" yaml:"integration,omitempty"`
	Reassessment *Reassessment `json:"reassessment,omitempty" yaml:"reassessment,omitempty"`

	Measurements []MeasurementRule `json:"measurements,omitempty" yaml:"measurements,omitempty"`

	Booster     *BoosterRule     `json:"booster,omitempty" yaml:"booster,omitempty"`
	Maintenance *MaintenanceRule `json:"maintenance,omitempty" yaml:"maintenance,omitempty"`
	Relapse     *RelapseRule     `json:"relapse,omitempty" yaml:"relapse,omitempty"`

	// FollowOn names the booster/maintenance protocols suggested after this one.
	FollowOn []string `json:"followOn,omitempty" yaml:"followOn,omitempty"`
	// Variants tailor the protocol by indication.
	Variants map[Indication]Variant `json:"variants,omitempty" yaml:"variants,omitempty"`
}
