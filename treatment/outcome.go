package treatment

import (
	"slices"
	"time"
)

// Assess recomputes prog.Outcome from its PHQ-9 measurements:
//
//   - Baseline is the earliest PHQ-9 total by effective time, Latest the most recent;
//   - PostInduction is the first PHQ-9 at or after the start of the induction's
//     last (not cancelled, not missed) dosing session;
//   - Response is a drop of at least 50% from baseline (baseline > 0, latest*2 <= baseline);
//   - Remission is latest < 5;
//   - RelapseSuspected is set when a plan's protocol has a relapse rule and the
//     latest PHQ-9, taken after the post-induction one, is at least RiseBy
//     above it or at least Threshold.
func Assess(prog *Program, lookup func(id string) (Protocol, bool)) {
	phq := phq9Series(prog.Measurements)
	var out Outcome
	if len(phq) == 0 {
		prog.Outcome = out
		return
	}
	base, latest := *phq[0].Total, *phq[len(phq)-1].Total
	out.Baseline, out.Latest = &base, &latest
	out.Response = base > 0 && latest*2 <= base
	out.Remission = latest < 5

	last, ok := lastInductionDose(prog)
	post := -1
	if ok {
		for i, m := range phq {
			if !m.Effective.Before(last) {
				post = i
				v := *m.Total
				out.PostInduction = &v
				break
			}
		}
	}
	if post >= 0 && post < len(phq)-1 && lookup != nil {
		pv := *phq[post].Total
		for _, pl := range prog.Plans {
			if pl.Status == PlanRevoked {
				continue
			}
			p, ok := lookup(pl.ProtocolID)
			if !ok || p.Relapse == nil {
				continue
			}
			r := p.Relapse
			if (r.RiseBy > 0 && latest >= pv+r.RiseBy) || (r.Threshold > 0 && latest >= r.Threshold) {
				out.RelapseSuspected = true
				break
			}
		}
	}
	prog.Outcome = out
}

// phq9Series returns the PHQ-9 measurements that have a total, ordered by
// effective time (then recorded time, then id, so the order is deterministic).
func phq9Series(ms []Measurement) []Measurement {
	var out []Measurement
	for _, m := range ms {
		if m.Instrument == InstrumentPHQ9 && m.Total != nil {
			out = append(out, m)
		}
	}
	slices.SortStableFunc(out, func(a, b Measurement) int {
		if c := a.Effective.Compare(b.Effective); c != 0 {
			return c
		}
		if c := a.Recorded.Compare(b.Recorded); c != 0 {
			return c
		}
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// lastInductionDose returns the start of the latest live dosing session of
// the programme's induction plan.
func lastInductionDose(prog *Program) (time.Time, bool) {
	var last time.Time
	for _, pl := range prog.Plans {
		if pl.Kind != PlanInduction {
			continue
		}
		for _, s := range prog.Sessions {
			if s.PlanID == pl.ID && s.Kind == SessionDosing && live(s) && s.Start.After(last) {
				last = s.Start
			}
		}
	}
	return last, !last.IsZero()
}

// live reports whether a session still counts: it has a slot and was neither
// cancelled nor missed.
func live(s Session) bool {
	return s.HasSlot() && s.Status != StatusCancelled && s.Status != StatusNoShow
}
