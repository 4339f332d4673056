package treatment

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestAssess(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC).AddDate(0, 0, d) }
	phq := func(d, total int) Measurement {
		return Measurement{ID: "m" + day(d).Format("0102"), Instrument: InstrumentPHQ9, Total: ip(total), Effective: day(d)}
	}
	relapse := Protocol{ID: "booster-on-relapse", Kind: PlanBooster, Relapse: &RelapseRule{RiseBy: 5, Threshold: 10}}
	induction := Protocol{ID: "iv", Kind: PlanInduction}
	lookup := func(id string) (Protocol, bool) {
		switch id {
		case relapse.ID:
			return relapse, true
		case induction.ID:
			return induction, true
		}
		return Protocol{}, false
	}
	base := func(withRelapse bool, ms ...Measurement) *Program {
		p := &Program{
			Plans: []Plan{{ID: "ind", ProtocolID: "iv", Kind: PlanInduction, Status: PlanActive}},
			Sessions: []Session{
				{ID: "d1", PlanID: "ind", Kind: SessionDosing, Status: StatusFulfilled, Dose: 1, Start: day(0), End: day(0).Add(time.Hour)},
				{ID: "d2", PlanID: "ind", Kind: SessionDosing, Status: StatusFulfilled, Dose: 2, Start: day(2), End: day(2).Add(time.Hour)},
				{ID: "d3", PlanID: "ind", Kind: SessionDosing, Status: StatusCancelled, Dose: 3, Start: day(4), End: day(4).Add(time.Hour)},
			},
			Measurements: ms,
		}
		if withRelapse {
			p.Plans = append(p.Plans, Plan{ID: "rel", ProtocolID: relapse.ID, Kind: PlanBooster, Status: PlanActive})
		}
		return p
	}
	// A GAD-7 and a PHQ-9 without a total never count.
	noise := []Measurement{
		{ID: "g", Instrument: InstrumentGAD7, Total: ip(20), Effective: day(-5)},
		{ID: "x", Instrument: InstrumentPHQ9, Effective: day(-6)},
	}
	tests := []struct {
		name string
		prog *Program
		want Outcome
	}{
		{"nothing", base(false), Outcome{}},
		{"baseline only", base(false, phq(-1, 20)), Outcome{Baseline: ip(20), Latest: ip(20)}},
		{"response exactly 50%", base(false, append(noise, phq(3, 10), phq(-1, 20))...),
			Outcome{Baseline: ip(20), Latest: ip(10), PostInduction: ip(10), Response: true}},
		{"no response", base(false, phq(-1, 20), phq(3, 11)), Outcome{Baseline: ip(20), Latest: ip(11), PostInduction: ip(11)}},
		{"remission", base(false, phq(-1, 20), phq(1, 12), phq(3, 4)),
			Outcome{Baseline: ip(20), Latest: ip(4), PostInduction: ip(4), Response: true, Remission: true}},
		{"zero baseline", base(false, phq(-1, 0), phq(3, 0)), Outcome{Baseline: ip(0), Latest: ip(0), PostInduction: ip(0), Remission: true}},
		{"post-induction at the last live dose", base(false, phq(-1, 20), phq(2, 8), phq(30, 9)),
			Outcome{Baseline: ip(20), Latest: ip(9), PostInduction: ip(8), Response: true}},
		{"rise without relapse rule", base(false, phq(-1, 20), phq(3, 4), phq(60, 12)),
			Outcome{Baseline: ip(20), Latest: ip(12), PostInduction: ip(4)}},
		{"relapse by rise", base(true, phq(-1, 20), phq(3, 2), phq(60, 7)),
			Outcome{Baseline: ip(20), Latest: ip(7), PostInduction: ip(2), Response: true, RelapseSuspected: true}},
		{"relapse by threshold", base(true, phq(-1, 20), phq(3, 8), phq(60, 10)),
			Outcome{Baseline: ip(20), Latest: ip(10), PostInduction: ip(8), Response: true, RelapseSuspected: true}},
		{"rise below both", base(true, phq(-1, 20), phq(3, 4), phq(60, 8)),
			Outcome{Baseline: ip(20), Latest: ip(8), PostInduction: ip(4), Response: true}},
		{"relapse resolved", base(true, phq(-1, 20), phq(3, 4), phq(60, 12), phq(90, 5)),
			Outcome{Baseline: ip(20), Latest: ip(5), PostInduction: ip(4), Response: true}},
		{"post-induction alone is no relapse", base(true, phq(-1, 20), phq(3, 15)),
			Outcome{Baseline: ip(20), Latest: ip(15), PostInduction: ip(15)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			Assess(tt.prog, lookup)
			if diff := cmp.Diff(tt.want, tt.prog.Outcome); diff != "" {
				t.Errorf("Outcome (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("revoked relapse plan", func(t *testing.T) {
		p := base(true, phq(-1, 20), phq(3, 2), phq(60, 12))
		p.Plans[1].Status = PlanRevoked
		Assess(p, lookup)
		if p.Outcome.RelapseSuspected {
			t.Error("RelapseSuspected with the relapse plan revoked")
		}
	})
}
