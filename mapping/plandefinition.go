package mapping

import (
	"fmt"
	"strings"
	"unicode"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	pdpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/plan_definition_go_proto"
	vs4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/valuesets_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// Action ids of a PlanDefinition, referenced by relatedAction.actionId.
const (
	actionPreparation  = "preparation"
	actionDosing       = "dosing"
	actionIntegration  = "integration"
	actionReassessment = "reassessment"
)

// PlanDefinition maps a catalogue protocol to a clinical-protocol
// PlanDefinition with canonical url CanonicalBase+"/PlanDefinition/"+id. Each
// step of the protocol is an action: the dosing series (a Timing built from
// the spacing rules), preparation, integration and reassessment visits placed
// relative to it with relatedAction, and one action per measurement rule
// coded with the instrument's LOINC code.
func PlanDefinition(p treatment.Protocol, o Options) Resource {
	pd := &pdpb.PlanDefinition{
		Id:         fhirID(p.ID),
		Url:        uri(o.PlanDefinitionURL(p.ID)),
		Identifier: []*d4pb.Identifier{o.identifier(p.ID)},
		Name:       str(computableName(p.ID)),
		Type:       concept("", coding(sysPlanDefType, clinicalProtocol, clinicalProtDisp)),
		Status:     &pdpb.PlanDefinition_StatusCode{Value: c4pb.PublicationStatusCode_ACTIVE},
	}
	if p.Version != "" {
		pd.Version = str(p.Version)
	}
	if p.Title != "" {
		pd.Title = str(p.Title)
	}
	if p.Description != "" {
		pd.Description = markdown(p.Description)
	}
	if p.Source != "" {
		pd.Usage = str(p.Source)
	}
	for _, ind := range p.Indications {
		pd.UseContext = append(pd.UseContext, &d4pb.UsageContext{
			Code: coding(sysUsageContextType, usageContextFocus, usageContextFocusD),
			Value: &d4pb.UsageContext_ValueX{Choice: &d4pb.UsageContext_ValueX_CodeableConcept{
				CodeableConcept: indicationConcept(ind),
			}},
		})
	}
	pd.Action = o.protocolActions(p)
	return Resource{Type: TypePlanDefinition, ID: p.ID, Msg: pd}
}

// computableName turns a protocol id ("ketamine-iv-6x-3wk") into a
// computable name ("KetamineIv6x3wk") matching [A-Z]([A-Za-z0-9_]){0,254}.
func computableName(id string) string {
	var b strings.Builder
	upper := true
	for _, r := range id {
		switch {
		case r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)):
			if upper {
				r = unicode.ToUpper(r)
			}
			b.WriteRune(r)
			upper = false
		default:
			upper = true
		}
	}
	name := b.String()
	if name == "" || !unicode.IsUpper(rune(name[0])) {
		name = "Protocol" + name
	}
	if len(name) > 255 {
		name = name[:255]
	}
	return name
}

func (o Options) protocolActions(p treatment.Protocol) []*pdpb.PlanDefinition_Action {
	var out []*pdpb.PlanDefinition_Action
	if st := p.Preparation; st != nil {
		title := st.Title
		if title == "" {
			title = "Preparation"
		}
		a := o.visitAction(actionPreparation, treatment.SessionPreparation, title, st.Minutes)
		a.Description = str(fmt.Sprintf("A %d-minute preparation visit, %s before the first dose.", st.Minutes, plural(st.DaysBefore, "day")))
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{
			relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_BEFORE_START, days(st.DaysBefore)),
		}
		out = append(out, a)
	}
	out = append(out, o.dosingAction(p))
	if in := p.Integration; in != nil {
		a := o.visitAction(actionIntegration, treatment.SessionIntegration, "Integration psychotherapy", in.Minutes)
		every := "each dose"
		if in.AfterEvery > 1 {
			every = fmt.Sprintf("every %s dose", ordinal(in.AfterEvery))
		}
		offs := make([]string, len(in.OffsetDays))
		for i, d := range in.OffsetDays {
			offs[i] = plural(d, "day")
			a.RelatedAction = append(a.RelatedAction,
				relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_AFTER_START, days(d)))
		}
		a.Description = str(fmt.Sprintf("A %d-minute integration psychotherapy visit %s after %s.", in.Minutes, strings.Join(offs, " and "), every))
		out = append(out, a)
	}
	if r := p.Reassessment; r != nil {
		a := o.visitAction(actionReassessment, treatment.SessionReassessment, "Reassessment", r.Minutes)
		a.Description = str(fmt.Sprintf("A %d-minute reassessment visit %d to %d days after the last dose.", r.Minutes, r.MinDays, r.MaxDays))
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{{
			ActionId:     fhirID(actionDosing),
			Relationship: &pdpb.PlanDefinition_Action_RelatedAction_RelationshipCode{Value: c4pb.ActionRelationshipTypeCode_AFTER_END},
			Offset: &pdpb.PlanDefinition_Action_RelatedAction_OffsetX{Choice: &pdpb.PlanDefinition_Action_RelatedAction_OffsetX_Range{
				Range: &d4pb.Range{Low: simpleQuantity(float64(r.MinDays), "days", "d"), High: simpleQuantity(float64(r.MaxDays), "days", "d")},
			}},
		}}
		out = append(out, a)
	}
	seen := map[string]int{}
	for _, m := range p.Measurements {
		out = append(out, o.measurementAction(m, seen))
	}
	return out
}

func (o Options) visitAction(id string, k treatment.SessionKind, title string, minutes int) *pdpb.PlanDefinition_Action {
	a := &pdpb.PlanDefinition_Action{
		Id:    str(id),
		Title: str(title),
		Code:  []*d4pb.CodeableConcept{concept(sessionKindLabel(k), o.sessionKindCoding(k))},
	}
	if minutes > 0 {
		a.Timing = &pdpb.PlanDefinition_Action_TimingX{Choice: &pdpb.PlanDefinition_Action_TimingX_Timing{
			Timing: &d4pb.Timing{Repeat: &d4pb.Timing_Repeat{
				Duration:     decimal(float64(minutes)),
				DurationUnit: &d4pb.Timing_Repeat_DurationUnitCode{Value: vs4pb.UnitsOfTimeValueSet_MIN},
			}},
		}}
	}
	return a
}

func relatedDuration(target string, rel c4pb.ActionRelationshipTypeCode_Value, off *d4pb.Duration) *pdpb.PlanDefinition_Action_RelatedAction {
	ra := &pdpb.PlanDefinition_Action_RelatedAction{
		ActionId:     fhirID(target),
		Relationship: &pdpb.PlanDefinition_Action_RelatedAction_RelationshipCode{Value: rel},
	}
	if off != nil {
		ra.Offset = &pdpb.PlanDefinition_Action_RelatedAction_OffsetX{Choice: &pdpb.PlanDefinition_Action_RelatedAction_OffsetX_Duration{Duration: off}}
	}
	return ra
}

// dosingAction is the series of ketamine doses: an induction series, booster
// sessions or maintenance sessions, depending on the protocol's kind.
func (o Options) dosingAction(p treatment.Protocol) *pdpb.PlanDefinition_Action {
	kind := treatment.SessionDosing
	switch p.Kind {
	case treatment.PlanBooster:
		kind = treatment.SessionBooster
	case treatment.PlanMaintenance:
		kind = treatment.SessionMaintenance
	}
	routes := routeLabel(p.Route)
	if len(p.Routes) > 0 {
		alt := make([]string, len(p.Routes))
		for i, r := range p.Routes {
			alt[i] = routeLabel(r)
		}
		routes += " (default; also " + strings.Join(alt, ", ") + ")"
	}
	var title string
	var desc []string
	var repeat *d4pb.Timing_Repeat
	switch p.Kind {
	case treatment.PlanBooster:
		title = "Ketamine booster sessions"
		if b := p.Booster; b != nil {
			desc = append(desc, fmt.Sprintf("%s%s proposed between %d and %d months after the induction's last dose, each booked inside its window.",
				capitalize(plural(b.Count.Default, "booster session")), allowed(b.Count), b.WindowStartMonths, b.WindowEndMonths))
			repeat = countRepeat(b.Count)
		}
		if r := p.Relapse; r != nil {
			desc = append(desc, relapseText(*r))
		}
	case treatment.PlanMaintenance:
		title = "Ketamine maintenance sessions"
		if m := p.Maintenance; m != nil {
			repeat = countRepeat(m.Count)
			repeat.Frequency = posInt(1)
			every := ""
			switch {
			case m.IntervalMonths > 0:
				repeat.Period = decimal(float64(m.IntervalMonths))
				repeat.PeriodUnit = &d4pb.Timing_Repeat_PeriodUnitCode{Value: vs4pb.UnitsOfTimeValueSet_MO}
				every = everyN(m.IntervalMonths, "month")
			default:
				n := max(m.IntervalDays, 1)
				repeat.Period = decimal(float64(n))
				repeat.PeriodUnit = &d4pb.Timing_Repeat_PeriodUnitCode{Value: vs4pb.UnitsOfTimeValueSet_D}
				every = everyN(n, "day")
			}
			desc = append(desc, fmt.Sprintf("%s%s, one %s after the induction's last dose.",
				capitalize(plural(m.Count.Default, "maintenance session")), allowed(m.Count), every))
		}
	default:
		title = "Ketamine dosing series"
		repeat = countRepeat(p.Doses)
		s := p.Spacing
		if s.MinDays > 0 {
			repeat.Frequency = posInt(1)
			repeat.Period = decimal(float64(s.MinDays))
			if s.MaxDays > s.MinDays {
				repeat.PeriodMax = decimal(float64(s.MaxDays))
			}
			repeat.PeriodUnit = &d4pb.Timing_Repeat_PeriodUnitCode{Value: vs4pb.UnitsOfTimeValueSet_D}
		}
		for _, w := range s.Weekdays {
			if d, ok := weekdays[w]; ok {
				repeat.DayOfWeek = append(repeat.DayOfWeek, &d4pb.Timing_Repeat_DayOfWeekCode{Value: d})
			}
		}
		if s.MaxSpanDays > 0 {
			repeat.Bounds = &d4pb.Timing_Repeat_BoundsX{Choice: &d4pb.Timing_Repeat_BoundsX_Duration{Duration: days(s.MaxSpanDays)}}
		}
		d := capitalize(plural(p.Doses.Default, "dose")) + allowed(p.Doses)
		if s.MaxDays > 0 {
			d += fmt.Sprintf(", %d to %d days apart", s.MinDays, s.MaxDays)
		}
		if s.PerWeekMax > 0 {
			d += fmt.Sprintf(", at most %d a week", s.PerWeekMax)
		}
		if !s.AllowConsecutive {
			d += ", never on consecutive days"
		}
		if len(s.Weekdays) > 0 {
			d += ", only on " + strings.Join(s.Weekdays, ", ")
		}
		if s.MaxSpanDays > 0 {
			d += fmt.Sprintf(", all within %d days of the first", s.MaxSpanDays)
		}
		desc = append(desc, d+".")
	}
	visit := fmt.Sprintf("Ketamine, route %s", routes)
	if p.DoseMinutes > 0 {
		visit += fmt.Sprintf(", %d-minute visits", p.DoseMinutes)
		if repeat == nil {
			repeat = &d4pb.Timing_Repeat{}
		}
		repeat.Duration = decimal(float64(p.DoseMinutes))
		repeat.DurationUnit = &d4pb.Timing_Repeat_DurationUnitCode{Value: vs4pb.UnitsOfTimeValueSet_MIN}
	}
	if p.SupervisedAtHome {
		visit += ", taken at home under remote supervision"
	}
	desc = append(desc, visit+". The protocol does not prescribe a dose.")

	a := &pdpb.PlanDefinition_Action{
		Id:          str(actionDosing),
		Title:       str(title),
		Description: str(strings.Join(desc, " ")),
		Code:        []*d4pb.CodeableConcept{concept(sessionKindLabel(kind), o.sessionKindCoding(kind))},
	}
	if repeat != nil {
		a.Timing = &pdpb.PlanDefinition_Action_TimingX{Choice: &pdpb.PlanDefinition_Action_TimingX_Timing{Timing: &d4pb.Timing{Repeat: repeat}}}
	}
	return a
}

func countRepeat(r treatment.IntRange) *d4pb.Timing_Repeat {
	rep := &d4pb.Timing_Repeat{Count: posInt(r.Default)}
	if r.Max > r.Default {
		rep.CountMax = posInt(r.Max)
	}
	return rep
}

func relapseText(r treatment.RelapseRule) string {
	var conds []string
	if r.RiseBy > 0 {
		conds = append(conds, fmt.Sprintf("rises by %d or more points above the post-induction score", r.RiseBy))
	}
	if r.Threshold > 0 {
		conds = append(conds, fmt.Sprintf("reaches %d or more", r.Threshold))
	}
	if len(conds) == 0 {
		return ""
	}
	return "A booster session is proposed when PHQ-9 " + strings.Join(conds, " or ") + "."
}

var weekdays = map[string]c4pb.DaysOfWeekCode_Value{
	"mon": c4pb.DaysOfWeekCode_MON, "tue": c4pb.DaysOfWeekCode_TUE, "wed": c4pb.DaysOfWeekCode_WED,
	"thu": c4pb.DaysOfWeekCode_THU, "fri": c4pb.DaysOfWeekCode_FRI, "sat": c4pb.DaysOfWeekCode_SAT,
	"sun": c4pb.DaysOfWeekCode_SUN,
}

// measurementAction is one measurement rule: the instrument's code, placed
// relative to the visit it is taken at.
func (o Options) measurementAction(m treatment.MeasurementRule, seen map[string]int) *pdpb.PlanDefinition_Action {
	id := "measure-" + string(m.Instrument) + "-" + m.At
	seen[id]++
	if n := seen[id]; n > 1 {
		id = fmt.Sprintf("%s-%d", id, n)
	}
	a := &pdpb.PlanDefinition_Action{
		Id:          str(id),
		Title:       str(instrumentName(m.Instrument)),
		Description: str(measurementWhen(m)),
		Code:        []*d4pb.CodeableConcept{o.instrumentCode(m.Instrument)},
	}
	var offMin *d4pb.Duration
	if m.OffsetMinutes > 0 {
		offMin = duration(float64(m.OffsetMinutes), "minutes", "min")
	}
	switch m.At {
	case treatment.AtBaseline:
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_BEFORE_START, nil)}
	case treatment.AtPreDose:
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_CONCURRENT_WITH_START, offMin)}
	case treatment.AtPostDose:
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_AFTER_START, offMin)}
	case treatment.AtReassessment:
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{relatedDuration(actionReassessment, c4pb.ActionRelationshipTypeCode_CONCURRENT_WITH_START, offMin)}
	case treatment.AtAfterLastDose:
		a.RelatedAction = []*pdpb.PlanDefinition_Action_RelatedAction{relatedDuration(actionDosing, c4pb.ActionRelationshipTypeCode_AFTER_END, days(m.OffsetDays))}
	}
	return a
}

// measurementWhen describes when a rule measures, e.g. "Before each dose".
func measurementWhen(m treatment.MeasurementRule) string {
	after := ""
	if m.OffsetMinutes > 0 {
		after = plural(m.OffsetMinutes, "minute") + " after the start of "
	}
	switch m.At {
	case treatment.AtBaseline:
		return "At baseline (the first visit)."
	case treatment.AtPreDose:
		if after != "" {
			return capitalize(after) + "each dosing visit."
		}
		return "Before each dose."
	case treatment.AtPostDose:
		if after == "" {
			return "After each dose."
		}
		return capitalize(after) + "each dose."
	case treatment.AtReassessment:
		if after != "" {
			return capitalize(after) + "the reassessment visit."
		}
		return "At the reassessment visit."
	case treatment.AtAfterLastDose:
		return capitalize(plural(m.OffsetDays, "day")) + " after the last dose."
	}
	return m.At
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// allowed describes a count range, " (1 to 2 allowed)", or "" when it is fixed.
func allowed(r treatment.IntRange) string {
	if r.Min == r.Max {
		return ""
	}
	return fmt.Sprintf(" (%d to %d allowed)", r.Min, r.Max)
}

func everyN(n int, unit string) string {
	if n == 1 {
		return "every " + unit
	}
	return fmt.Sprintf("every %d %ss", n, unit)
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprintf("%d%s", n, suffix)
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
