package catalogue

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

var shippedIDs = []string{
	"booster-3to6mo", "booster-on-relapse", "kap-spaced-3to6", "ketamine-iv-6x-2wk-study", "ketamine-iv-6x-3wk",
	"maintenance-biweekly", "maintenance-monthly", "maintenance-weekly", "sublingual-extended-24", "sublingual-foundation-8",
}

func load(t *testing.T, dir string) *Catalogue {
	t.Helper()
	c, err := Load(dir)
	if err != nil {
		t.Fatalf("Load(%q): %v", dir, err)
	}
	return c
}

func ids(ps []treatment.Protocol) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func TestLoadShipped(t *testing.T) {
	c := load(t, "")
	if diff := cmp.Diff(shippedIDs, ids(c.All())); diff != "" {
		t.Fatalf("ids (-want +got):\n%s", diff)
	}
	for _, p := range c.All() {
		if ps := treatment.ValidateProtocol(p); len(ps) > 0 {
			t.Errorf("%s: %v", p.ID, ps)
		}
		if p.Title == "" || p.Description == "" || len(p.Indications) == 0 {
			t.Errorf("%s: needs a title, a description and indications", p.ID)
		}
		if !strings.Contains(p.Source, "odels") || !strings.Contains(p.Source, "kapfhir default") {
			t.Errorf("%s: source must say what it models and which values are kapfhir defaults: %q", p.ID, p.Source)
		}
		if f, ok := c.File(p.ID); !ok || f != "builtin/"+p.ID+".yaml" {
			t.Errorf("%s: File = %q, %v", p.ID, f, ok)
		}
	}
}

func TestGetAndLookup(t *testing.T) {
	c := load(t, "")
	p, ok := c.Get("ketamine-iv-6x-3wk")
	if !ok || p.Kind != treatment.PlanInduction {
		t.Fatalf("Get = %v, %v", p.ID, ok)
	}
	// The result is a copy: changing it changes nothing in the catalogue.
	p.FollowOn[0] = "changed"
	p.Variants[treatment.IndicationPTSD].Integration.OffsetDays[0] = 9
	p.Integration.OffsetDays[0] = 9
	again, _ := c.Get("ketamine-iv-6x-3wk")
	if again.FollowOn[0] == "changed" || again.Variants[treatment.IndicationPTSD].Integration.OffsetDays[0] == 9 || again.Integration.OffsetDays[0] == 9 {
		t.Error("changing a Get result changed the catalogue")
	}
	if _, ok := c.Get("nope"); ok {
		t.Error("Get(nope) found something")
	}
	if _, err := c.Lookup("nope"); treatment.ErrorKind(err) != treatment.KindNotFound {
		t.Errorf("Lookup(nope) error = %v, want not_found", err)
	}
	if p, err := c.Lookup("booster-3to6mo"); err != nil || p.ID != "booster-3to6mo" {
		t.Errorf("Lookup(booster-3to6mo) = %s, %v", p.ID, err)
	}
}

func TestLoadOverride(t *testing.T) {
	c := load(t, "testdata/override")
	want := append(slices.Clone(shippedIDs), "clinic-maintenance-3wk")
	slices.Sort(want)
	if diff := cmp.Diff(want, ids(c.All())); diff != "" {
		t.Fatalf("ids (-want +got):\n%s", diff)
	}
	p, _ := c.Get("ketamine-iv-6x-3wk")
	if p.Version != "1.1.0-clinic" || p.DoseMinutes != 150 || p.Integration != nil {
		t.Errorf("override not applied: %+v", p)
	}
	if f, _ := c.File("ketamine-iv-6x-3wk"); f != "iv.yaml" {
		t.Errorf("File = %q, want iv.yaml", f)
	}
	m, _ := c.Get("clinic-maintenance-3wk")
	if m.Maintenance == nil || m.Maintenance.IntervalDays != 21 {
		t.Errorf("JSON protocol = %+v", m)
	}
}

func TestLoadProblems(t *testing.T) {
	_, err := Load("testdata/bad")
	var e *treatment.Error
	if !errors.As(err, &e) || e.Kind != treatment.KindInvalid {
		t.Fatalf("Load(testdata/bad) error = %v, want a KindInvalid *treatment.Error", err)
	}
	got := map[string]bool{}
	for _, f := range e.Fields {
		got[f.Field] = true
	}
	for _, field := range []string{
		"dup-b.yaml: id",
		"empty.yaml",
		"syntax.json",
		"two.yaml",
		"unknown-field.yaml",
		"values.yml: doses.default",
		"values.yml: spacing.weekdays[1]",
		"values.yml: measurements[1].at",
		"values.yml: followOn[0]",
		"values.yml: followOn[1]",
	} {
		if !got[field] {
			t.Errorf("problems lack %q; got:\n%v", field, err)
		}
	}
	if len(e.Fields) != 10 {
		t.Errorf("%d problems, want 10:\n%v", len(e.Fields), err)
	}
	if !strings.Contains(err.Error(), "unknown-field.yaml: ") || !strings.Contains(err.Error(), "colour") {
		t.Errorf("the unknown field is not named: %v", err)
	}
}

func TestLoadMissingDir(t *testing.T) {
	if _, err := Load("testdata/does-not-exist"); err == nil {
		t.Error("Load of a missing directory succeeded")
	}
}

// ---- the shipped protocols, scheduled ----------------------------------------

func seq(prefix string) func() string {
	n := 0
	return func() string { n++; return fmt.Sprintf("%s%d", prefix, n) }
}

func newYork(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

type plan struct {
	doses, integration, preparation, reassessment []time.Time
	all                                           []treatment.Session
}

func schedule(t *testing.T, c *Catalogue, id string, req treatment.ScheduleRequest, cal treatment.Calendar) (plan, []treatment.ScheduleIssue) {
	t.Helper()
	p, err := c.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	ss, issues, err := treatment.Schedule(p, req, cal, seq("s"))
	if err != nil {
		t.Fatalf("Schedule(%s): %v", id, err)
	}
	var out plan
	out.all = ss
	for _, s := range ss {
		st := s.Start.In(cal.Location)
		switch s.Kind {
		case treatment.SessionDosing:
			out.doses = append(out.doses, st)
		case treatment.SessionIntegration:
			out.integration = append(out.integration, st)
		case treatment.SessionPreparation:
			out.preparation = append(out.preparation, st)
		case treatment.SessionReassessment:
			out.reassessment = append(out.reassessment, st)
		}
	}
	return out, issues
}

func days(ts []time.Time) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Format("Mon 01-02 15:04"))
	}
	return out
}

func gapDays(a, b time.Time) int {
	da := time.Date(a.Year(), a.Month(), a.Day(), 0, 0, 0, 0, time.UTC)
	db := time.Date(b.Year(), b.Month(), b.Day(), 0, 0, 0, 0, time.UTC)
	return int(db.Sub(da).Hours() / 24)
}

func TestShippedIV3wk(t *testing.T) {
	c := load(t, "")
	ny := newYork(t)
	cal := treatment.DefaultCalendar(ny) // Mon-Fri 08-18, Sat 09-13
	start := time.Date(2026, 10, 26, 9, 30, 0, 0, ny)
	pl, issues := schedule(t, c, "ketamine-iv-6x-3wk", treatment.ScheduleRequest{PlanID: "p", Start: start}, cal)
	want := []string{"Mon 10-26 09:30", "Wed 10-28 09:30", "Fri 10-30 09:30", "Mon 11-02 09:30", "Wed 11-04 09:30", "Fri 11-06 09:30"}
	if diff := cmp.Diff(want, days(pl.doses)); diff != "" {
		t.Errorf("doses (-want +got):\n%s", diff)
	}
	// One integration visit the day after each infusion; the Saturday ones at 09:30 fit 09-13.
	if diff := cmp.Diff([]string{"Tue 10-27 09:30", "Thu 10-29 09:30", "Sat 10-31 09:30", "Tue 11-03 09:30", "Thu 11-05 09:30", "Sat 11-07 09:30"}, days(pl.integration)); diff != "" {
		t.Errorf("integration (-want +got):\n%s", diff)
	}
	if g := gapDays(pl.doses[5], pl.reassessment[0]); len(pl.reassessment) != 1 || g < 5 || g > 10 {
		t.Errorf("reassessment %v, want one 5-10 days after the last dose", days(pl.reassessment))
	}
	if len(issues) != 0 {
		t.Errorf("issues = %+v", issues)
	}
	// Measurements: BP and HR 40 minutes after each infusion, PHQ-9 at baseline,
	// before each dose and at the reassessment.
	p, _ := c.Get("ketamine-iv-6x-3wk")
	count := map[string]int{}
	for _, m := range treatment.PlanMeasurements(p, pl.all) {
		count[string(m.Instrument)+"@"+m.At]++
		if m.At == treatment.AtPostDose {
			s := slices.IndexFunc(pl.all, func(s treatment.Session) bool { return s.ID == m.SessionID })
			if got := m.Time.Sub(pl.all[s].Start); got != 40*time.Minute {
				t.Errorf("post-dose %s at +%v, want +40m", m.Instrument, got)
			}
		}
	}
	wantCount := map[string]int{
		"phq9@baseline": 1, "gad7@baseline": 1, "phq9@pre-dose": 6, "gad7@pre-dose": 6, "bp@pre-dose": 6, "hr@pre-dose": 6,
		"bp@post-dose": 6, "hr@post-dose": 6, "phq9@reassessment": 1, "gad7@reassessment": 1,
	}
	if diff := cmp.Diff(wantCount, count); diff != "" {
		t.Errorf("planned measurements (-want +got):\n%s", diff)
	}

	t.Run("variants", func(t *testing.T) {
		pl, _ := schedule(t, c, "ketamine-iv-6x-3wk", treatment.ScheduleRequest{PlanID: "p", Start: start, Indication: treatment.IndicationPTSD}, cal)
		for i := 1; i < len(pl.doses); i++ {
			if g := gapDays(pl.doses[i-1], pl.doses[i]); g < 3 {
				t.Errorf("ptsd: doses %d and %d are %d days apart, want at least 3", i, i+1, g)
			}
		}
		if len(pl.integration) <= len(pl.doses) {
			t.Errorf("ptsd: %d integration visits for %d doses, want more", len(pl.integration), len(pl.doses))
		}
		pl, _ = schedule(t, c, "ketamine-iv-6x-3wk", treatment.ScheduleRequest{PlanID: "p", Start: start, Indication: treatment.IndicationTRD, Doses: 4}, cal)
		if len(pl.doses) != 4 {
			t.Errorf("trd: %d doses, want 4", len(pl.doses))
		}
		pl, _ = schedule(t, c, "ketamine-iv-6x-3wk", treatment.ScheduleRequest{PlanID: "p", Start: start, Indication: treatment.IndicationAnxiety}, cal)
		if g := gapDays(pl.doses[5], pl.reassessment[0]); g < 3 || g > 5 {
			t.Errorf("anxiety: reassessment %d days after the last dose, want 3-5", g)
		}
		p, _ := c.Get("ketamine-iv-6x-3wk")
		p, _ = p.ForIndication(treatment.IndicationAnxiety)
		if p.FollowOn[0] != "maintenance-weekly" {
			t.Errorf("anxiety followOn = %v, want maintenance first", p.FollowOn)
		}
	})
}

func TestShippedStudy2wk(t *testing.T) {
	c := load(t, "")
	ny := newYork(t)
	cal := treatment.DefaultCalendar(ny)
	cal.Closed["2026-11-11"] = true // a Wednesday holiday
	pl, issues := schedule(t, c, "ketamine-iv-6x-2wk-study", treatment.ScheduleRequest{PlanID: "p", Start: time.Date(2026, 11, 2, 8, 0, 0, 0, ny)}, cal)
	want := []string{"Mon 11-02 08:00", "Wed 11-04 08:00", "Fri 11-06 08:00", "Mon 11-09 08:00", "Fri 11-13 08:00", "Mon 11-16 08:00"}
	if diff := cmp.Diff(want, days(pl.doses)); diff != "" {
		t.Errorf("doses (-want +got):\n%s", diff)
	}
	// The holiday leaves four days between doses 4 and 5 (the protocol allows
	// three); the series still ends inside its 14 days.
	if diff := cmp.Diff([]string{"spacing-exceeded"}, codes(issues)); diff != "" {
		t.Errorf("issues (-want +got):\n%s", diff)
	}
	p, _ := c.Get("ketamine-iv-6x-2wk-study")
	pms := treatment.PlanMeasurements(p, pl.all)
	last := pms[len(pms)-1]
	if last.At != treatment.AtAfterLastDose || !last.Time.Equal(pl.doses[5].AddDate(0, 0, 1)) {
		t.Errorf("last planned measurement = %+v, want PHQ-9 a day after the last dose", last)
	}
}

func codes(is []treatment.ScheduleIssue) []string {
	var out []string
	for _, i := range is {
		out = append(out, i.Code)
	}
	return out
}

func TestShippedKAP(t *testing.T) {
	c := load(t, "")
	ny := newYork(t)
	cal := treatment.DefaultCalendar(ny)
	pl, issues := schedule(t, c, "kap-spaced-3to6", treatment.ScheduleRequest{PlanID: "p", Start: time.Date(2026, 9, 7, 9, 0, 0, 0, ny), Doses: 4}, cal)
	if len(pl.preparation) != 1 || len(pl.doses) != 4 {
		t.Fatalf("%d preparation, %d doses; want 1 and 4", len(pl.preparation), len(pl.doses))
	}
	for i, d := range pl.doses {
		if i > 0 {
			if g := gapDays(pl.doses[i-1], d); g < 7 || g > 14 {
				t.Errorf("doses %d and %d are %d days apart, want 7-14", i, i+1, g)
			}
		}
		// Exactly two integration sessions after each dose, before the next one.
		n := 0
		for _, v := range pl.integration {
			if v.After(d) && (i+1 == len(pl.doses) || v.Before(pl.doses[i+1])) {
				n++
			}
		}
		if n != 2 {
			t.Errorf("dose %d is followed by %d integration sessions, want 2", i+1, n)
		}
	}
	if len(issues) != 0 {
		t.Errorf("issues = %+v", issues)
	}
	p, _ := c.Get("kap-spaced-3to6")
	if !slices.Equal(p.FollowOn, []string{"booster-3to6mo"}) {
		t.Errorf("followOn = %v", p.FollowOn)
	}
}

func TestShippedSublingual(t *testing.T) {
	c := load(t, "")
	ny := newYork(t)
	cal := treatment.DefaultCalendar(ny)
	for _, tt := range []struct {
		id    string
		doses int
	}{{"sublingual-foundation-8", 8}, {"sublingual-extended-24", 24}} {
		t.Run(tt.id, func(t *testing.T) {
			pl, issues := schedule(t, c, tt.id, treatment.ScheduleRequest{PlanID: "p", Start: time.Date(2026, 2, 2, 10, 0, 0, 0, ny)}, cal)
			if len(pl.preparation) != 1 || len(pl.doses) != tt.doses {
				t.Fatalf("%d preparation, %d doses; want 1 and %d", len(pl.preparation), len(pl.doses), tt.doses)
			}
			if !pl.preparation[0].Before(pl.doses[0]) {
				t.Error("the clinician visit is not before the first dose")
			}
			week := map[int]int{}
			for i, d := range pl.doses {
				_, w := d.ISOWeek()
				week[w]++
				if week[w] > 2 {
					t.Errorf("more than 2 doses in week %d", w)
				}
				if i > 0 && gapDays(pl.doses[i-1], d) < 3 {
					t.Errorf("doses %d and %d closer than 3 days", i, i+1)
				}
			}
			if len(pl.integration) != tt.doses/2 {
				t.Errorf("%d integration visits, want %d (after every second dose)", len(pl.integration), tt.doses/2)
			}
			if len(issues) != 0 {
				t.Errorf("issues = %+v", issues)
			}
			p, _ := c.Get(tt.id)
			if !p.SupervisedAtHome || p.Route != treatment.RouteSublingual {
				t.Errorf("%s: supervisedAtHome %v route %s", tt.id, p.SupervisedAtHome, p.Route)
			}
		})
	}
}

func TestShippedFollowOn(t *testing.T) {
	c := load(t, "")
	ny := newYork(t)
	cal := treatment.DefaultCalendar(ny)
	after := time.Date(2026, 3, 6, 10, 0, 0, 0, ny)
	for _, tt := range []struct {
		id    string
		count int
		slots bool
	}{
		{"booster-3to6mo", 1, false},
		{"booster-on-relapse", 0, false},
		{"maintenance-weekly", 4, true},
		{"maintenance-biweekly", 4, true},
		{"maintenance-monthly", 4, true},
	} {
		p, _ := c.Get(tt.id)
		ss, _, err := treatment.ScheduleFollowOn(p, treatment.FollowOnRequest{PlanID: "f", After: after}, cal, seq("f"))
		if err != nil {
			t.Fatalf("%s: %v", tt.id, err)
		}
		if len(ss) != tt.count {
			t.Errorf("%s: %d sessions, want %d", tt.id, len(ss), tt.count)
		}
		for _, s := range ss {
			if s.HasSlot() != tt.slots {
				t.Errorf("%s: session %+v, slots %v", tt.id, s, tt.slots)
			}
			if !tt.slots && (s.Window == nil || s.Window.Start.Before(after.AddDate(0, 3, -1)) || s.Window.End.After(after.AddDate(0, 6, 1))) {
				t.Errorf("%s: window %+v, want inside 3-6 months", tt.id, s.Window)
			}
		}
	}
	// booster-on-relapse's rule: a rise of 5 above the post-induction PHQ-9, or 10 or more.
	p, _ := c.Get("booster-on-relapse")
	if p.Relapse == nil || p.Relapse.RiseBy != 5 || p.Relapse.Threshold != 10 {
		t.Errorf("relapse rule = %+v", p.Relapse)
	}
}
