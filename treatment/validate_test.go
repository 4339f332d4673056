package treatment

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// ivProtocol is an induction protocol shaped like the shipped
// ketamine-iv-6x-3wk, kept here so the domain tests need no catalogue.
func ivProtocol() Protocol {
	return Protocol{
		ID: "iv-test", Version: "1.0.0", Title: "IV test", Indications: []Indication{IndicationTRD, IndicationMDD, IndicationPTSD},
		Kind: PlanInduction, Route: RouteIV, Routes: []Route{RouteIM},
		Doses:        IntRange{Min: 6, Max: 6, Default: 6},
		Spacing:      Spacing{MinDays: 2, MaxDays: 7, PerWeekMax: 3, MaxSpanDays: 21},
		DoseMinutes:  120,
		Integration:  &Integration{AfterEvery: 1, OffsetDays: []int{1}, Minutes: 50},
		Reassessment: &Reassessment{MinDays: 5, MaxDays: 10, Minutes: 60},
		Measurements: []MeasurementRule{
			{Instrument: InstrumentPHQ9, At: AtBaseline},
			{Instrument: InstrumentBP, At: AtPostDose, OffsetMinutes: 40},
			{Instrument: InstrumentPHQ9, At: AtReassessment},
		},
		FollowOn: []string{"booster-3to6mo"},
		Variants: map[Indication]Variant{
			IndicationTRD:     {Doses: &IntRange{Min: 4, Max: 6, Default: 6}},
			IndicationPTSD:    {Spacing: &Spacing{MinDays: 3, MaxDays: 7, PerWeekMax: 2, MaxSpanDays: 28}, Integration: &Integration{AfterEvery: 1, OffsetDays: []int{1, 2}, Minutes: 60}},
			IndicationAnxiety: {Reassessment: &Reassessment{MinDays: 3, MaxDays: 5, Minutes: 60}, FollowOn: []string{"maintenance-weekly"}},
		},
	}
}

func fields(ps Problems) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Field)
	}
	return out
}

func TestValidateProtocolValid(t *testing.T) {
	valid := []Protocol{
		ivProtocol(),
		{ID: "booster-x", Version: "1", Title: "Booster", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60,
			Booster: &BoosterRule{Count: IntRange{Min: 1, Max: 2, Default: 1}, WindowStartMonths: 3, WindowEndMonths: 6}},
		{ID: "relapse-x", Version: "1", Title: "Relapse", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60,
			Relapse: &RelapseRule{RiseBy: 5, Threshold: 10}},
		{ID: "maint-x", Version: "1", Title: "Maintenance", Kind: PlanMaintenance, Route: RouteIV, DoseMinutes: 60,
			Maintenance: &MaintenanceRule{IntervalMonths: 1, Count: IntRange{Min: 1, Max: 12, Default: 4}}},
	}
	for _, p := range valid {
		if ps := ValidateProtocol(p); len(ps) > 0 {
			t.Errorf("ValidateProtocol(%s) = %v, want no problems", p.ID, ps)
		}
	}
}

func TestValidateProtocolProblems(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *Protocol)
		want   []string // fields that must be reported
	}{
		{"bad id", func(p *Protocol) { p.ID = "IV_test" }, []string{"id"}},
		{"short id", func(p *Protocol) { p.ID = "a" }, []string{"id"}},
		{"no version", func(p *Protocol) { p.Version = "" }, []string{"version"}},
		{"no title", func(p *Protocol) { p.Title = " " }, []string{"title"}},
		{"unknown indication", func(p *Protocol) { p.Indications = append(p.Indications, "flu") }, []string{"indications[3]"}},
		{"no indications", func(p *Protocol) { p.Indications = nil }, []string{"indications"}},
		{"bad kind", func(p *Protocol) { p.Kind = "series" }, []string{"kind"}},
		{"bad route", func(p *Protocol) { p.Route = "oral" }, []string{"route"}},
		{"repeated route", func(p *Protocol) { p.Routes = []Route{RouteIV} }, []string{"routes[0]"}},
		{"default above max", func(p *Protocol) { p.Doses = IntRange{Min: 4, Max: 6, Default: 7} }, []string{"doses.default"}},
		{"min above max", func(p *Protocol) { p.Doses = IntRange{Min: 6, Max: 4, Default: 5} }, []string{"doses.max", "doses.default"}},
		{"zero doses", func(p *Protocol) { p.Doses = IntRange{} }, []string{"doses.min"}},
		{"spacing max below min", func(p *Protocol) { p.Spacing.MaxDays = 1 }, []string{"spacing.maxDays"}},
		{"consecutive without allow", func(p *Protocol) { p.Spacing.MinDays = 1 }, []string{"spacing.minDays"}},
		{"bad weekday", func(p *Protocol) { p.Spacing.Weekdays = []string{"mon", "funday", "mon"} }, []string{"spacing.weekdays[1]", "spacing.weekdays[2]"}},
		{"window too short", func(p *Protocol) { p.Spacing.MaxSpanDays = 5 }, []string{"spacing.maxSpanDays"}},
		{"per week cap", func(p *Protocol) { p.Spacing.PerWeekMax = 8 }, []string{"spacing.perWeekMax"}},
		{"dose minutes", func(p *Protocol) { p.DoseMinutes = 0 }, []string{"doseMinutes"}},
		{"integration offsets", func(p *Protocol) { p.Integration.OffsetDays = []int{3, 2, 0} }, []string{"integration.offsetDays[1]", "integration.offsetDays[2]"}},
		{"integration every", func(p *Protocol) { p.Integration.AfterEvery = 0 }, []string{"integration.afterEvery"}},
		{"reassessment window", func(p *Protocol) { p.Reassessment.MaxDays = 2 }, []string{"reassessment.maxDays"}},
		{"preparation", func(p *Protocol) { p.Preparation = &Step{} }, []string{"preparation.title", "preparation.daysBefore", "preparation.minutes"}},
		{"measurement instrument and at", func(p *Protocol) {
			p.Measurements = append(p.Measurements, MeasurementRule{Instrument: "mood", At: "lunch"})
		}, []string{"measurements[3].instrument", "measurements[3].at"}},
		{"measurement offset days", func(p *Protocol) { p.Measurements[1].OffsetDays = 2 }, []string{"measurements[1].offsetDays"}},
		{"reassessment measurement without visit", func(p *Protocol) {
			p.Reassessment = nil
			p.Variants = nil
		}, []string{"measurements[2].at"}},
		{"booster on induction", func(p *Protocol) { p.Booster = &BoosterRule{} }, []string{"booster"}},
		{"empty followOn", func(p *Protocol) { p.FollowOn = []string{""} }, []string{"followOn[0]"}},
		{"self followOn", func(p *Protocol) { p.FollowOn = []string{"iv-test"} }, []string{"followOn[0]"}},
		{"variant unknown indication", func(p *Protocol) { p.Variants["flu"] = Variant{} }, []string{"variants.flu"}},
		{"variant doses", func(p *Protocol) { p.Variants[IndicationTRD] = Variant{Doses: &IntRange{Min: 4, Max: 6, Default: 9}} }, []string{"variants.trd.doses.default"}},
		{"variant spacing", func(p *Protocol) {
			p.Variants[IndicationPTSD] = Variant{Spacing: &Spacing{MinDays: 3, MaxDays: 2}}
		}, []string{"variants.ptsd.spacing.maxDays"}},
		{"variant followOn", func(p *Protocol) { p.Variants[IndicationAnxiety] = Variant{FollowOn: []string{"Bad Id"}} }, []string{"variants.anxiety.followOn[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ivProtocol()
			tt.change(&p)
			got := fields(ValidateProtocol(p))
			for _, f := range tt.want {
				if !slices.Contains(got, f) {
					t.Errorf("problems %v lack field %q", got, f)
				}
			}
		})
	}
}

func TestValidateFollowOnKinds(t *testing.T) {
	tests := []struct {
		name string
		p    Protocol
		want []string
	}{
		{"booster without rule", Protocol{ID: "b1", Version: "1", Title: "B", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60}, []string{"booster"}},
		{"booster window", Protocol{ID: "b2", Version: "1", Title: "B", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60,
			Booster: &BoosterRule{Count: IntRange{Min: 1, Max: 2, Default: 3}, WindowStartMonths: 6, WindowEndMonths: 3}},
			[]string{"booster.count.default", "booster.windowEndMonths"}},
		{"maintenance without cadence", Protocol{ID: "m1", Version: "1", Title: "M", Kind: PlanMaintenance, Route: RouteIV, DoseMinutes: 60}, []string{"maintenance"}},
		{"maintenance both intervals", Protocol{ID: "m2", Version: "1", Title: "M", Kind: PlanMaintenance, Route: RouteIV, DoseMinutes: 60,
			Maintenance: &MaintenanceRule{IntervalDays: 7, IntervalMonths: 1, Count: IntRange{Min: 1, Max: 4, Default: 4}}}, []string{"maintenance.intervalMonths"}},
		{"maintenance with doses and spacing", Protocol{ID: "m3", Version: "1", Title: "M", Kind: PlanMaintenance, Route: RouteIV, DoseMinutes: 60,
			Doses: IntRange{Min: 1, Max: 1, Default: 1}, Spacing: Spacing{MinDays: 2},
			Maintenance: &MaintenanceRule{IntervalDays: 7, Count: IntRange{Min: 1, Max: 4, Default: 4}}}, []string{"doses", "spacing"}},
		{"relapse empty", Protocol{ID: "r1", Version: "1", Title: "R", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60,
			Relapse: &RelapseRule{}}, []string{"relapse"}},
		{"relapse range", Protocol{ID: "r2", Version: "1", Title: "R", Kind: PlanBooster, Route: RouteIV, DoseMinutes: 60,
			Relapse: &RelapseRule{RiseBy: 30, Threshold: -1}}, []string{"relapse.riseBy", "relapse.threshold"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fields(ValidateProtocol(tt.p))
			for _, f := range tt.want {
				if !slices.Contains(got, f) {
					t.Errorf("problems %v lack field %q", got, f)
				}
			}
		})
	}
}

func TestForIndication(t *testing.T) {
	base := ivProtocol()
	tests := []struct {
		name string
		ind  Indication
		want func(p Protocol) Protocol
	}{
		{"empty", "", func(p Protocol) Protocol { return p }},
		{"listed without variant", IndicationMDD, func(p Protocol) Protocol { return p }},
		{"doses variant", IndicationTRD, func(p Protocol) Protocol {
			p.Doses = IntRange{Min: 4, Max: 6, Default: 6}
			return p
		}},
		{"spacing and integration variant", IndicationPTSD, func(p Protocol) Protocol {
			p.Spacing = Spacing{MinDays: 3, MaxDays: 7, PerWeekMax: 2, MaxSpanDays: 28}
			p.Integration = &Integration{AfterEvery: 1, OffsetDays: []int{1, 2}, Minutes: 60}
			return p
		}},
		{"variant for an unlisted indication", IndicationAnxiety, func(p Protocol) Protocol {
			p.Reassessment = &Reassessment{MinDays: 3, MaxDays: 5, Minutes: 60}
			p.FollowOn = []string{"maintenance-weekly"}
			return p
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := base.ForIndication(tt.ind)
			if err != nil {
				t.Fatalf("ForIndication(%q): %v", tt.ind, err)
			}
			if diff := cmp.Diff(tt.want(ivProtocol()), got); diff != "" {
				t.Errorf("ForIndication(%q) (-want +got):\n%s", tt.ind, diff)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		p := base
		p.Variants = nil
		_, err := p.ForIndication(IndicationAnxiety)
		if ErrorKind(err) != KindInvalid {
			t.Fatalf("ForIndication(anxiety) error = %v, want invalid", err)
		}
		if got := fields(err.(*Error).Fields); !slices.Equal(got, []string{"indication"}) {
			t.Errorf("fields = %v, want [indication]", got)
		}
	})
	t.Run("no aliasing", func(t *testing.T) {
		got, _ := base.ForIndication(IndicationPTSD)
		got.Integration.OffsetDays[0] = 9
		if base.Variants[IndicationPTSD].Integration.OffsetDays[0] != 1 {
			t.Error("changing the result changed the protocol's variant")
		}
	})
}
