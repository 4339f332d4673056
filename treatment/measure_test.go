package treatment

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func ip(v int) *int         { return &v }
func fp(v float64) *float64 { return &v }
func ninePHQ(v int) []int   { return []int{v, v, v, v, v, v, v, v, v} }

func TestNormalizeMeasurement(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	eff := now.Add(-time.Hour)
	tests := []struct {
		name      string
		in        Measurement
		wantTotal *int
		want      []FieldError // nil = valid
	}{
		{"phq9 items fill total", Measurement{Instrument: InstrumentPHQ9, Items: []int{3, 2, 1, 0, 3, 2, 1, 0, 1}, Effective: eff}, ip(13), nil},
		{"phq9 items and matching total", Measurement{Instrument: InstrumentPHQ9, Items: ninePHQ(3), Total: ip(27), Effective: eff}, ip(27), nil},
		{"phq9 total only", Measurement{Instrument: InstrumentPHQ9, Total: ip(0), Effective: eff}, ip(0), nil},
		{"gad7 items", Measurement{Instrument: InstrumentGAD7, Items: []int{3, 3, 3, 3, 3, 3, 3}, Effective: eff}, ip(21), nil},
		{"effective 5 minutes ahead", Measurement{Instrument: InstrumentPHQ9, Total: ip(5), Effective: now.Add(5 * time.Minute)}, ip(5), nil},
		{"bp", Measurement{Instrument: InstrumentBP, Systolic: ip(120), Diastolic: ip(80), Effective: eff}, nil, nil},
		{"hr", Measurement{Instrument: InstrumentHR, Value: fp(72), Effective: eff}, nil, nil},
		{"spo2", Measurement{Instrument: InstrumentSpO2, Value: fp(100), Effective: eff}, nil, nil},
		{"sleep", Measurement{Instrument: InstrumentSleep, Value: fp(0), Effective: eff}, nil, nil},

		{"unknown instrument", Measurement{Instrument: "mood", Effective: eff}, nil, []FieldError{{"instrument", "must be one of phq9, gad7, bp, hr, spo2, sleep"}}},
		{"no instrument no effective", Measurement{}, nil, []FieldError{{"effective", "is required"}, {"instrument", "is required"}}},
		{"future", Measurement{Instrument: InstrumentPHQ9, Total: ip(5), Effective: now.Add(6 * time.Minute)}, ip(5), []FieldError{{"effective", "must not be in the future"}}},
		{"phq9 nothing", Measurement{Instrument: InstrumentPHQ9, Effective: eff}, nil, []FieldError{{"items", "give the 9 answers, the total, or both"}}},
		{"phq9 wrong count", Measurement{Instrument: InstrumentPHQ9, Items: []int{1, 2}, Effective: eff}, nil, []FieldError{{"items", "must have 9 answers"}}},
		{"phq9 bad items", Measurement{Instrument: InstrumentPHQ9, Items: []int{0, 0, 0, 4, 0, 0, -1, 0, 0}, Effective: eff}, nil,
			[]FieldError{{"items[3]", "must be 0 to 3"}, {"items[6]", "must be 0 to 3"}}},
		{"phq9 total mismatch", Measurement{Instrument: InstrumentPHQ9, Items: ninePHQ(1), Total: ip(10), Effective: eff}, ip(10), []FieldError{{"total", "does not match the sum of the items"}}},
		{"phq9 total range", Measurement{Instrument: InstrumentPHQ9, Total: ip(28), Effective: eff}, ip(28), []FieldError{{"total", "must be 0 to 27"}}},
		{"gad7 total range", Measurement{Instrument: InstrumentGAD7, Total: ip(22), Effective: eff}, ip(22), []FieldError{{"total", "must be 0 to 21"}}},
		{"phq9 foreign fields", Measurement{Instrument: InstrumentPHQ9, Total: ip(3), Systolic: ip(120), Value: fp(1), Effective: eff}, ip(3),
			[]FieldError{{"systolic", "does not belong to a phq9 measurement"}, {"value", "does not belong to a phq9 measurement"}}},
		{"bp missing", Measurement{Instrument: InstrumentBP, Effective: eff}, nil, []FieldError{{"systolic", "is required"}, {"diastolic", "is required"}}},
		{"bp ranges", Measurement{Instrument: InstrumentBP, Systolic: ip(300), Diastolic: ip(10), Effective: eff}, nil,
			[]FieldError{{"systolic", "must be 50 to 260 mm[Hg]"}, {"diastolic", "must be 20 to 160 mm[Hg]"}}},
		{"bp inverted", Measurement{Instrument: InstrumentBP, Systolic: ip(80), Diastolic: ip(80), Effective: eff}, nil, []FieldError{{"diastolic", "must be below systolic"}}},
		{"bp foreign fields", Measurement{Instrument: InstrumentBP, Systolic: ip(120), Diastolic: ip(80), Items: ninePHQ(0), Total: ip(0), Value: fp(1), Effective: eff}, ip(0),
			[]FieldError{{"items", "does not belong to a bp measurement"}, {"total", "does not belong to a bp measurement"}, {"value", "does not belong to a bp measurement"}}},
		{"hr missing", Measurement{Instrument: InstrumentHR, Effective: eff}, nil, []FieldError{{"value", "is required"}}},
		{"hr range", Measurement{Instrument: InstrumentHR, Value: fp(19.5), Effective: eff}, nil, []FieldError{{"value", "must be 20 to 250 /min"}}},
		{"spo2 range", Measurement{Instrument: InstrumentSpO2, Value: fp(101), Effective: eff}, nil, []FieldError{{"value", "must be 50 to 100 %"}}},
		{"sleep range", Measurement{Instrument: InstrumentSleep, Value: fp(25), Effective: eff}, nil, []FieldError{{"value", "must be 0 to 24 h"}}},
		{"sleep NaN", Measurement{Instrument: InstrumentSleep, Value: fp(math.NaN()), Effective: eff}, nil, []FieldError{{"value", "must be a number"}}},
		{"hr foreign fields", Measurement{Instrument: InstrumentHR, Value: fp(60), Diastolic: ip(80), Effective: eff}, nil, []FieldError{{"diastolic", "does not belong to a hr measurement"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.in
			err := NormalizeMeasurement(&m, now)
			var got []FieldError
			if err != nil {
				e, ok := err.(*Error)
				if !ok || e.Kind != KindInvalid {
					t.Fatalf("error = %v, want a KindInvalid *Error", err)
				}
				got = e.Fields
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantTotal, m.Total); diff != "" {
				t.Errorf("total (-want +got):\n%s", diff)
			}
		})
	}
}
