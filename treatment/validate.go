package treatment

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

var (
	protocolIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,63}$`)
	versionPattern    = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$`)
)

// Limits that keep a protocol schedulable.
const (
	maxSessionMinutes = 12 * 60
	maxDoses          = 100
	maxSpanDaysLimit  = 366
	maxMonthsLimit    = 24
)

// knownIndications, knownRoutes and knownInstruments list the values the domain understands.
var (
	knownIndications = []Indication{IndicationTRD, IndicationMDD, IndicationPTSD, IndicationAnxiety}
	knownRoutes      = []Route{RouteIV, RouteIM, RouteSublingual, RouteIntranasal}
	knownInstruments = []Instrument{InstrumentPHQ9, InstrumentGAD7, InstrumentBP, InstrumentHR, InstrumentSpO2, InstrumentSleep}
	knownAt          = []string{AtBaseline, AtPreDose, AtPostDose, AtReassessment, AtAfterLastDose}
)

// weekdayNames maps the protocol's weekday names to time.Weekday.
var weekdayNames = map[string]time.Weekday{
	"mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday, "thu": time.Thursday,
	"fri": time.Friday, "sat": time.Saturday, "sun": time.Sunday,
}

func knownWeekday(w string) bool {
	_, ok := weekdayNames[w]
	return ok
}

// KnownIndication reports whether ind is one of the indications kapfhir understands.
func KnownIndication(ind Indication) bool { return slices.Contains(knownIndications, ind) }

// KnownRoute reports whether r is one of the routes kapfhir understands.
func KnownRoute(r Route) bool { return slices.Contains(knownRoutes, r) }

// KnownInstrument reports whether i is one of the instruments kapfhir understands.
func KnownInstrument(i Instrument) bool { return slices.Contains(knownInstruments, i) }

// ValidProtocolID reports whether id is a well-formed protocol id.
func ValidProtocolID(id string) bool { return protocolIDPattern.MatchString(id) }

func joinValues[T ~string](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

// ValidateProtocol checks every field of a protocol and reports every problem
// at once. Field names are the YAML paths of the catalogue files
// ("doses.default", "measurements[2].at", "variants.ptsd.spacing.minDays").
// Cross-references to other protocols (followOn) are checked only for form;
// the catalogue checks that they exist.
func ValidateProtocol(p Protocol) Problems {
	var ps Problems
	switch {
	case p.ID == "":
		ps.Add("id", "is required")
	case !protocolIDPattern.MatchString(p.ID):
		ps.Add("id", "must be 2-64 lowercase letters, digits or hyphens, starting with a letter or digit")
	}
	switch {
	case p.Version == "":
		ps.Add("version", "is required")
	case !versionPattern.MatchString(p.Version):
		ps.Add("version", "must be up to 32 letters, digits, '.', '+' or '-' (e.g. 1.0.0)")
	}
	switch {
	case strings.TrimSpace(p.Title) == "":
		ps.Add("title", "is required")
	case len(p.Title) > 200:
		ps.Add("title", "must be at most 200 characters")
	}
	seenInd := map[Indication]bool{}
	for i, ind := range p.Indications {
		f := fmt.Sprintf("indications[%d]", i)
		switch {
		case !KnownIndication(ind):
			ps.Addf(f, "must be one of %s", joinValues(knownIndications))
		case seenInd[ind]:
			ps.Add(f, "is listed twice")
		}
		seenInd[ind] = true
	}
	switch p.Kind {
	case PlanInduction, PlanBooster, PlanMaintenance:
	case "":
		ps.Add("kind", "is required")
	default:
		ps.Add("kind", "must be induction, booster or maintenance")
	}
	if p.Kind == PlanInduction && len(p.Indications) == 0 {
		ps.Add("indications", "an induction protocol must list at least one indication")
	}
	switch {
	case p.Route == "":
		ps.Add("route", "is required")
	case !KnownRoute(p.Route):
		ps.Addf("route", "must be one of %s", joinValues(knownRoutes))
	}
	seenRoute := map[Route]bool{p.Route: true}
	for i, r := range p.Routes {
		f := fmt.Sprintf("routes[%d]", i)
		switch {
		case !KnownRoute(r):
			ps.Addf(f, "must be one of %s", joinValues(knownRoutes))
		case seenRoute[r]:
			ps.Add(f, "repeats the protocol's route or another listed route")
		}
		seenRoute[r] = true
	}
	checkMinutes(&ps, "doseMinutes", p.DoseMinutes)

	if p.Kind == PlanInduction {
		checkDoses(&ps, "doses", p.Doses)
		checkSpacing(&ps, "spacing", p.Spacing, p.Doses)
		if p.Preparation != nil {
			checkStep(&ps, "preparation", *p.Preparation)
		}
		if p.Integration != nil {
			checkIntegration(&ps, "integration", *p.Integration)
		}
		if p.Reassessment != nil {
			checkReassessment(&ps, "reassessment", *p.Reassessment)
		}
		if p.Booster != nil {
			ps.Add("booster", "is only for booster protocols")
		}
		if p.Maintenance != nil {
			ps.Add("maintenance", "is only for maintenance protocols")
		}
		if p.Relapse != nil {
			ps.Add("relapse", "is only for booster or maintenance protocols")
		}
	} else {
		if p.Doses != (IntRange{}) {
			ps.Add("doses", "is only for induction protocols (booster and maintenance protocols count sessions in booster.count or maintenance.count)")
		}
		if !isZeroSpacing(p.Spacing) {
			ps.Add("spacing", "is only for induction protocols")
		}
		if p.Preparation != nil {
			ps.Add("preparation", "is only for induction protocols")
		}
		if p.Integration != nil {
			ps.Add("integration", "is only for induction protocols")
		}
		if p.Reassessment != nil {
			ps.Add("reassessment", "is only for induction protocols")
		}
	}
	switch p.Kind {
	case PlanBooster:
		if p.Booster == nil && p.Relapse == nil {
			ps.Add("booster", "a booster protocol needs a booster window or a relapse rule")
		}
		if p.Maintenance != nil {
			ps.Add("maintenance", "is only for maintenance protocols")
		}
	case PlanMaintenance:
		if p.Maintenance == nil {
			ps.Add("maintenance", "is required for a maintenance protocol")
		}
		if p.Booster != nil {
			ps.Add("booster", "is only for booster protocols")
		}
	}
	if p.Booster != nil && p.Kind == PlanBooster {
		b := p.Booster
		checkCount(&ps, "booster.count", b.Count)
		if b.WindowStartMonths < 0 || b.WindowStartMonths > maxMonthsLimit {
			ps.Addf("booster.windowStartMonths", "must be 0 to %d", maxMonthsLimit)
		}
		if b.WindowEndMonths <= b.WindowStartMonths || b.WindowEndMonths > maxMonthsLimit {
			ps.Addf("booster.windowEndMonths", "must be after windowStartMonths and at most %d", maxMonthsLimit)
		}
	}
	if m := p.Maintenance; m != nil && p.Kind == PlanMaintenance {
		switch {
		case m.IntervalDays < 0:
			ps.Add("maintenance.intervalDays", "must not be negative")
		case m.IntervalMonths < 0:
			ps.Add("maintenance.intervalMonths", "must not be negative")
		case m.IntervalDays == 0 && m.IntervalMonths == 0:
			ps.Add("maintenance.intervalDays", "give intervalDays or intervalMonths")
		case m.IntervalDays > 0 && m.IntervalMonths > 0:
			ps.Add("maintenance.intervalMonths", "give intervalDays or intervalMonths, not both")
		case m.IntervalDays > maxSpanDaysLimit:
			ps.Addf("maintenance.intervalDays", "must be at most %d", maxSpanDaysLimit)
		case m.IntervalMonths > 12:
			ps.Add("maintenance.intervalMonths", "must be at most 12")
		}
		checkCount(&ps, "maintenance.count", m.Count)
	}
	if r := p.Relapse; r != nil && p.Kind != PlanInduction {
		if r.RiseBy < 0 || r.RiseBy > 27 {
			ps.Add("relapse.riseBy", "must be 0 to 27 PHQ-9 points")
		}
		if r.Threshold < 0 || r.Threshold > 27 {
			ps.Add("relapse.threshold", "must be 0 to 27 PHQ-9 points")
		}
		if r.RiseBy == 0 && r.Threshold == 0 {
			ps.Add("relapse", "give riseBy, threshold or both")
		}
	}

	for i, m := range p.Measurements {
		checkMeasurementRule(&ps, fmt.Sprintf("measurements[%d]", i), m, p)
	}
	checkFollowOn(&ps, "followOn", p.ID, p.FollowOn)

	for _, ind := range sortedIndications(p.Variants) {
		v := p.Variants[ind]
		prefix := "variants." + string(ind)
		if !KnownIndication(ind) {
			ps.Addf(prefix, "is not a known indication (%s)", joinValues(knownIndications))
			continue
		}
		if p.Kind != PlanInduction {
			ps.Add(prefix, "variants are only for induction protocols")
			continue
		}
		doses := p.Doses
		if v.Doses != nil {
			doses = *v.Doses
			checkDoses(&ps, prefix+".doses", doses)
		}
		if v.Spacing != nil {
			checkSpacing(&ps, prefix+".spacing", *v.Spacing, doses)
		} else if v.Doses != nil && p.Spacing.MaxSpanDays > 0 && (doses.Min-1)*p.Spacing.MinDays > p.Spacing.MaxSpanDays {
			ps.Addf(prefix+".doses.min", "is too many doses for spacing.maxSpanDays at least %d days apart", p.Spacing.MinDays)
		}
		if v.Integration != nil {
			checkIntegration(&ps, prefix+".integration", *v.Integration)
		}
		if v.Reassessment != nil {
			checkReassessment(&ps, prefix+".reassessment", *v.Reassessment)
		}
		checkFollowOn(&ps, prefix+".followOn", p.ID, v.FollowOn)
	}
	return ps
}

func sortedIndications(m map[Indication]Variant) []Indication {
	keys := make([]Indication, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func isZeroSpacing(s Spacing) bool {
	return s.MinDays == 0 && s.MaxDays == 0 && len(s.Weekdays) == 0 && s.PerWeekMax == 0 && !s.AllowConsecutive && s.MaxSpanDays == 0
}

func checkMinutes(ps *Problems, field string, m int) {
	if m < 1 || m > maxSessionMinutes {
		ps.Addf(field, "must be 1 to %d minutes", maxSessionMinutes)
	}
}

func checkRange(ps *Problems, field string, r IntRange, lo, hi int) {
	if r.Min < lo || r.Min > hi {
		ps.Addf(field+".min", "must be %d to %d", lo, hi)
	}
	if r.Max < r.Min || r.Max > hi {
		ps.Addf(field+".max", "must be at least min and at most %d", hi)
	}
	if r.Default < r.Min || r.Default > r.Max {
		ps.Add(field+".default", "must be between min and max")
	}
}

func checkDoses(ps *Problems, field string, r IntRange) { checkRange(ps, field, r, 1, maxDoses) }
func checkCount(ps *Problems, field string, r IntRange) { checkRange(ps, field, r, 1, 52) }

func checkSpacing(ps *Problems, field string, s Spacing, doses IntRange) {
	if s.MinDays < 1 || s.MinDays > maxSpanDaysLimit {
		ps.Addf(field+".minDays", "must be 1 to %d", maxSpanDaysLimit)
	}
	if s.MaxDays < s.MinDays || s.MaxDays > maxSpanDaysLimit {
		ps.Addf(field+".maxDays", "must be at least minDays and at most %d", maxSpanDaysLimit)
	}
	if s.MinDays == 1 && !s.AllowConsecutive {
		ps.Add(field+".minDays", "1 day apart needs allowConsecutive: true (use 2 otherwise)")
	}
	seen := map[string]bool{}
	for i, w := range s.Weekdays {
		f := fmt.Sprintf("%s.weekdays[%d]", field, i)
		switch {
		case !knownWeekday(w):
			ps.Add(f, "must be one of mon, tue, wed, thu, fri, sat, sun")
		case seen[w]:
			ps.Add(f, "is listed twice")
		}
		seen[w] = true
	}
	if s.PerWeekMax < 0 || s.PerWeekMax > 7 {
		ps.Add(field+".perWeekMax", "must be 0 (no cap) to 7")
	}
	if s.MaxSpanDays < 0 || s.MaxSpanDays > maxSpanDaysLimit {
		ps.Addf(field+".maxSpanDays", "must be 0 (no window) to %d", maxSpanDaysLimit)
	} else if s.MaxSpanDays > 0 && s.MinDays > 0 && doses.Min > 1 && (doses.Min-1)*s.MinDays > s.MaxSpanDays {
		ps.Addf(field+".maxSpanDays", "is too short for %d doses at least %d days apart", doses.Min, s.MinDays)
	}
}

func checkStep(ps *Problems, field string, s Step) {
	if strings.TrimSpace(s.Title) == "" {
		ps.Add(field+".title", "is required")
	}
	if s.DaysBefore < 1 || s.DaysBefore > 90 {
		ps.Add(field+".daysBefore", "must be 1 to 90")
	}
	checkMinutes(ps, field+".minutes", s.Minutes)
}

func checkIntegration(ps *Problems, field string, in Integration) {
	if in.AfterEvery < 1 || in.AfterEvery > maxDoses {
		ps.Addf(field+".afterEvery", "must be 1 to %d", maxDoses)
	}
	if len(in.OffsetDays) == 0 {
		ps.Add(field+".offsetDays", "needs at least one offset")
	}
	prev := 0
	for i, d := range in.OffsetDays {
		f := fmt.Sprintf("%s.offsetDays[%d]", field, i)
		switch {
		case d < 1 || d > 90:
			ps.Add(f, "must be 1 to 90 days after the dose")
		case d <= prev:
			ps.Add(f, "must be later than the previous offset")
		}
		prev = max(prev, d)
	}
	checkMinutes(ps, field+".minutes", in.Minutes)
}

func checkReassessment(ps *Problems, field string, r Reassessment) {
	if r.MinDays < 1 || r.MinDays > 90 {
		ps.Add(field+".minDays", "must be 1 to 90 days after the last dose")
	}
	if r.MaxDays < r.MinDays || r.MaxDays > 90 {
		ps.Add(field+".maxDays", "must be at least minDays and at most 90")
	}
	checkMinutes(ps, field+".minutes", r.Minutes)
}

func checkMeasurementRule(ps *Problems, field string, m MeasurementRule, p Protocol) {
	if !KnownInstrument(m.Instrument) {
		ps.Addf(field+".instrument", "must be one of %s", joinValues(knownInstruments))
	}
	if !slices.Contains(knownAt, m.At) {
		ps.Addf(field+".at", "must be one of %s", strings.Join(knownAt, ", "))
		return
	}
	if m.OffsetMinutes < 0 || m.OffsetMinutes > 24*60 {
		ps.Add(field+".offsetMinutes", "must be 0 to 1440")
	}
	if m.At == AtPreDose && m.OffsetMinutes != 0 {
		ps.Add(field+".offsetMinutes", "must be 0 for pre-dose measurements")
	}
	if m.At == AtAfterLastDose {
		if m.OffsetDays < 0 || m.OffsetDays > 90 {
			ps.Add(field+".offsetDays", "must be 0 to 90")
		}
	} else if m.OffsetDays != 0 {
		ps.Add(field+".offsetDays", "is only for after-last-dose measurements")
	}
	if m.At == AtReassessment && p.Reassessment == nil && !variantsHaveReassessment(p) {
		ps.Add(field+".at", "reassessment measurements need a reassessment visit")
	}
}

func variantsHaveReassessment(p Protocol) bool {
	for _, v := range p.Variants {
		if v.Reassessment != nil {
			return true
		}
	}
	return false
}

func checkFollowOn(ps *Problems, field, self string, ids []string) {
	seen := map[string]bool{}
	for i, id := range ids {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case id == "":
			ps.Add(f, "must not be empty")
		case !protocolIDPattern.MatchString(id):
			ps.Add(f, "is not a well-formed protocol id")
		case id == self:
			ps.Add(f, "must not name the protocol itself")
		case seen[id]:
			ps.Add(f, "is listed twice")
		}
		seen[id] = true
	}
}

// ForIndication returns the protocol with the variant for ind applied. An
// empty indication returns p unchanged; an indication that p neither lists
// nor has a variant for is a KindInvalid error naming field "indication".
// The result shares no slices with p.
func (p Protocol) ForIndication(ind Indication) (Protocol, error) {
	if ind == "" {
		return p, nil
	}
	v, ok := p.Variants[ind]
	if !ok {
		if slices.Contains(p.Indications, ind) {
			return p, nil
		}
		reason := fmt.Sprintf("protocol %s is not for this indication", p.ID)
		if len(p.Indications) > 0 {
			reason += " (it lists " + joinValues(p.Indications) + ")"
		}
		return Protocol{}, Invalid("invalid indication", FieldError{Field: "indication", Reason: reason})
	}
	q := p
	if v.Doses != nil {
		q.Doses = *v.Doses
	}
	if v.Spacing != nil {
		s := *v.Spacing
		s.Weekdays = slices.Clone(s.Weekdays)
		q.Spacing = s
	}
	if v.Integration != nil {
		in := *v.Integration
		in.OffsetDays = slices.Clone(in.OffsetDays)
		q.Integration = &in
	}
	if v.Reassessment != nil {
		r := *v.Reassessment
		q.Reassessment = &r
	}
	if len(v.FollowOn) > 0 {
		q.FollowOn = slices.Clone(v.FollowOn)
	}
	return q, nil
}
