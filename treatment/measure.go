package treatment

import (
	"fmt"
	"math"
	"time"
)

// maxFutureSkew is how far in the future a measurement's effective time may be
// (device clocks drift).
const maxFutureSkew = 5 * time.Minute

// questionnaire describes a scored questionnaire: its number of items and the
// highest answer of each.
type questionnaire struct {
	items   int
	itemMax int
}

var questionnaires = map[Instrument]questionnaire{
	InstrumentPHQ9: {items: 9, itemMax: 3},
	InstrumentGAD7: {items: 7, itemMax: 3},
}

// valueRanges are the plausible ranges of single-value instruments, with their unit.
var valueRanges = map[Instrument]struct {
	lo, hi float64
	unit   string
}{
	InstrumentHR:    {20, 250, "/min"},
	InstrumentSpO2:  {50, 100, "%"},
	InstrumentSleep: {0, 24, "h"},
}

// NormalizeMeasurement validates m and fills Total from Items for
// questionnaires. It reports every problem at once, naming fields as the JSON
// API does ("items[3]", "systolic", "effective"); reasons never echo values.
func NormalizeMeasurement(m *Measurement, now time.Time) error {
	var ps Problems
	switch {
	case m.Effective.IsZero():
		ps.Add("effective", "is required")
	case m.Effective.After(now.Add(maxFutureSkew)):
		ps.Add("effective", "must not be in the future")
	}
	if !KnownInstrument(m.Instrument) {
		if m.Instrument == "" {
			ps.Add("instrument", "is required")
		} else {
			ps.Addf("instrument", "must be one of %s", joinValues(knownInstruments))
		}
		return ps.Err("invalid measurement")
	}
	notFor := func(field string) { ps.Addf(field, "does not belong to a %s measurement", m.Instrument) }

	if q, ok := questionnaires[m.Instrument]; ok {
		if m.Systolic != nil {
			notFor("systolic")
		}
		if m.Diastolic != nil {
			notFor("diastolic")
		}
		if m.Value != nil {
			notFor("value")
		}
		maxTotal := q.items * q.itemMax
		sum, itemsOK := 0, true
		switch {
		case len(m.Items) == 0 && m.Total == nil:
			ps.Addf("items", "give the %d answers, the total, or both", q.items)
			itemsOK = false
		case len(m.Items) == 0:
			itemsOK = false
		case len(m.Items) != q.items:
			ps.Addf("items", "must have %d answers", q.items)
			itemsOK = false
		default:
			for i, v := range m.Items {
				if v < 0 || v > q.itemMax {
					ps.Addf(fmt.Sprintf("items[%d]", i), "must be 0 to %d", q.itemMax)
					itemsOK = false
				}
				sum += v
			}
		}
		if m.Total != nil {
			switch {
			case *m.Total < 0 || *m.Total > maxTotal:
				ps.Addf("total", "must be 0 to %d", maxTotal)
			case itemsOK && *m.Total != sum:
				ps.Add("total", "does not match the sum of the items")
			}
		} else if itemsOK {
			t := sum
			m.Total = &t
		}
		return ps.Err("invalid measurement")
	}

	if len(m.Items) > 0 {
		notFor("items")
	}
	if m.Total != nil {
		notFor("total")
	}
	if m.Instrument == InstrumentBP {
		if m.Value != nil {
			notFor("value")
		}
		if m.Systolic == nil {
			ps.Add("systolic", "is required")
		} else if *m.Systolic < 50 || *m.Systolic > 260 {
			ps.Add("systolic", "must be 50 to 260 mm[Hg]")
		}
		if m.Diastolic == nil {
			ps.Add("diastolic", "is required")
		} else if *m.Diastolic < 20 || *m.Diastolic > 160 {
			ps.Add("diastolic", "must be 20 to 160 mm[Hg]")
		}
		if m.Systolic != nil && m.Diastolic != nil && *m.Systolic <= *m.Diastolic {
			ps.Add("diastolic", "must be below systolic")
		}
		return ps.Err("invalid measurement")
	}

	r := valueRanges[m.Instrument]
	if m.Systolic != nil {
		notFor("systolic")
	}
	if m.Diastolic != nil {
		notFor("diastolic")
	}
	switch {
	case m.Value == nil:
		ps.Add("value", "is required")
	case math.IsNaN(*m.Value) || math.IsInf(*m.Value, 0):
		ps.Add("value", "must be a number")
	case *m.Value < r.lo || *m.Value > r.hi:
		ps.Addf("value", "must be %g to %g %s", r.lo, r.hi, r.unit)
	}
	return ps.Err("invalid measurement")
}
