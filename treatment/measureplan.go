package treatment

import (
	"sort"
	"time"
)

// PlannedMeasurement is a measurement the protocol asks for at a session.
type PlannedMeasurement struct {
	Instrument Instrument
	At         string // the MeasurementRule.At it comes from
	SessionID  string // the session it is taken at, "" for after-last-dose
	// Time is when it is due: the session start plus the rule's offset.
	Time time.Time
}

// PlanMeasurements lists the measurements a protocol plans for the given
// sessions (one plan's sessions, in order), skipping cancelled and missed
// sessions, ordered by time then instrument.
func PlanMeasurements(p Protocol, sessions []Session) []PlannedMeasurement {
	var live []Session
	for _, s := range sessions {
		if s.Status == StatusCancelled || s.Status == StatusNoShow || !s.HasSlot() {
			continue
		}
		live = append(live, s)
	}
	var doses []Session
	var reassess []Session
	for _, s := range live {
		switch s.Kind {
		case SessionDosing, SessionBooster, SessionMaintenance:
			doses = append(doses, s)
		case SessionReassessment:
			reassess = append(reassess, s)
		}
	}
	var out []PlannedMeasurement
	add := func(r MeasurementRule, s Session, t time.Time) {
		out = append(out, PlannedMeasurement{Instrument: r.Instrument, At: r.At, SessionID: s.ID, Time: t})
	}
	for _, r := range p.Measurements {
		off := time.Duration(r.OffsetMinutes) * time.Minute
		switch r.At {
		case AtBaseline:
			if len(live) > 0 {
				add(r, live[0], live[0].Start.Add(off))
			}
		case AtPreDose:
			for _, s := range doses {
				add(r, s, s.Start.Add(off))
			}
		case AtPostDose:
			for _, s := range doses {
				add(r, s, s.Start.Add(off))
			}
		case AtReassessment:
			for _, s := range reassess {
				add(r, s, s.Start.Add(off))
			}
		case AtAfterLastDose:
			if n := len(doses); n > 0 {
				last := doses[n-1]
				t := last.Start.AddDate(0, 0, r.OffsetDays).Add(off)
				out = append(out, PlannedMeasurement{Instrument: r.Instrument, At: r.At, Time: t})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].Instrument < out[j].Instrument
	})
	return out
}
