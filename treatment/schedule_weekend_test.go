package treatment_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/catalogue"
	"github.com/kapfhir/kapfhir/treatment"
)

// TestDosesAvoidLosingIntegrationVisits: with Saturday open and Sunday
// closed, a dose that would fall on a Saturday (its next-day integration
// visit impossible) moves to a day whose visit fits, when the spacing allows.
// Every start weekday is tried.
func TestDosesAvoidLosingIntegrationVisits(t *testing.T) {
	cat, err := catalogue.Load("")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := cat.Get("ketamine-iv-6x-3wk")
	if !ok {
		t.Fatal("protocol missing")
	}
	cal := treatment.DefaultCalendar(time.UTC)
	for d := range 6 { // Monday .. Saturday 2027-01-04 .. 09 (Sunday is closed)
		start := time.Date(2027, 1, 4+d, 9, 0, 0, 0, time.UTC)
		if start.Weekday() == time.Saturday {
			continue // a Saturday start is the caller's choice: reported, not moved
		}
		t.Run(start.Weekday().String(), func(t *testing.T) {
			n := 0
			sessions, issues, err := treatment.Schedule(p, treatment.ScheduleRequest{PlanID: "plan", Start: start}, cal, func() string { n++; return fmt.Sprint(n) })
			if err != nil {
				t.Fatal(err)
			}
			for _, is := range issues {
				t.Errorf("issue: %s: %s", is.Code, is.Message)
			}
			doses, visits := 0, 0
			for _, s := range sessions {
				switch s.Kind {
				case treatment.SessionDosing:
					doses++
				case treatment.SessionIntegration:
					visits++
				}
			}
			if doses != 6 || visits != 6 {
				t.Errorf("%d doses and %d integration visits, want 6 and 6", doses, visits)
			}
		})
	}
}
