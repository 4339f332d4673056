package treatment

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// seqIDs returns an id generator that counts from 1: deterministic ids for tests.
func seqIDs(prefix string) func() string {
	n := 0
	return func() string {
		n++
		return fmt.Sprintf("%s%d", prefix, n)
	}
}

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%q): %v", name, err)
	}
	return loc
}

// scenario is one random protocol, calendar and start.
type scenario struct {
	p     Protocol
	cal   Calendar
	start time.Time
	doses int
}

var allWeekdays = []time.Weekday{time.Sunday, time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday, time.Saturday}
var weekdayName = map[time.Weekday]string{
	time.Monday: "mon", time.Tuesday: "tue", time.Wednesday: "wed", time.Thursday: "thu",
	time.Friday: "fri", time.Saturday: "sat", time.Sunday: "sun",
}

// randomScenario builds a valid protocol and a calendar with at least one
// weekday on which a dose fits, random closed dates, and a start in 2026 so
// that series cross both DST changes of America/New_York (8 March, 1 November).
func randomScenario(r *rand.Rand, locs []*time.Location) scenario {
	loc := locs[r.Intn(len(locs))]
	cal := Calendar{Location: loc, Open: map[time.Weekday]Hours{}, Closed: map[string]bool{}}
	for _, wd := range allWeekdays {
		if r.Intn(10) < 7 {
			open := 6*60 + r.Intn(8)*30
			cal.Open[wd] = Hours{Open: open, Close: min(open+4*60+r.Intn(13)*30, 24*60)}
		}
	}
	if len(cal.Open) == 0 {
		cal.Open[time.Monday] = Hours{Open: 8 * 60, Close: 18 * 60}
	}
	shortest := 24 * 60
	var openDays []time.Weekday
	for _, wd := range allWeekdays {
		if h, ok := cal.Open[wd]; ok {
			shortest = min(shortest, h.Close-h.Open)
			openDays = append(openDays, wd)
		}
	}
	// Closed dates: about 8% of the days of 2026 and early 2027.
	for d := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() < 2028; d = d.AddDate(0, 0, 1) {
		if r.Intn(100) < 8 {
			cal.Closed[d.Format(time.DateOnly)] = true
		}
	}

	p := Protocol{ID: "random", Version: "1", Title: "Random", Indications: []Indication{IndicationMDD}, Kind: PlanInduction, Route: RouteIV}
	p.Doses.Min = 1 + r.Intn(8)
	p.Doses.Max = p.Doses.Min + r.Intn(5)
	p.Doses.Default = p.Doses.Min + r.Intn(p.Doses.Max-p.Doses.Min+1)
	p.Spacing.MinDays = 1 + r.Intn(7)
	p.Spacing.AllowConsecutive = p.Spacing.MinDays == 1 || r.Intn(4) == 0
	p.Spacing.MaxDays = p.Spacing.MinDays + r.Intn(8)
	p.Spacing.PerWeekMax = r.Intn(4)
	if r.Intn(3) == 0 {
		for _, wd := range openDays {
			if r.Intn(2) == 0 {
				p.Spacing.Weekdays = append(p.Spacing.Weekdays, weekdayName[wd])
			}
		}
	}
	if r.Intn(2) == 0 {
		p.Spacing.MaxSpanDays = (p.Doses.Min-1)*p.Spacing.MinDays + r.Intn(14)
	}
	p.DoseMinutes = 15 + r.Intn(max(1, min(shortest, 240)-15))
	if r.Intn(3) > 0 {
		offs := []int{1 + r.Intn(3)}
		if r.Intn(2) == 0 {
			offs = append(offs, offs[0]+1+r.Intn(4))
		}
		p.Integration = &Integration{AfterEvery: 1 + r.Intn(3), OffsetDays: offs, Minutes: 15 + r.Intn(max(1, min(shortest, 90)-15))}
	}
	if r.Intn(3) > 0 {
		lo := 1 + r.Intn(7)
		p.Reassessment = &Reassessment{MinDays: lo, MaxDays: lo + r.Intn(10), Minutes: 15 + r.Intn(max(1, min(shortest, 90)-15))}
	}
	if r.Intn(3) == 0 {
		p.Preparation = &Step{Title: "Prep", DaysBefore: 1 + r.Intn(7), Minutes: 15 + r.Intn(max(1, min(shortest, 90)-15))}
	}

	// The start: an open (and, without preparation, dosing) day between
	// mid-February and mid-December 2026, at a time the first session fits.
	firstMinutes := p.DoseMinutes
	if p.Preparation != nil {
		firstMinutes = p.Preparation.Minutes
	}
	allowed := newDoseRules(p)
	d := time.Date(2026, 2, 15, 0, 0, 0, 0, time.UTC).AddDate(0, 0, r.Intn(300))
	for {
		h, ok := cal.hoursOn(d)
		okDay := ok && h.Close-h.Open >= firstMinutes && (p.Preparation != nil || allowed.weekdays == nil || allowed.weekdays[d.Weekday()])
		if okDay {
			tod := h.Open + r.Intn(h.Close-h.Open-firstMinutes+1)
			tod -= tod % 5
			start, exists := cal.at(d, tod)
			if exists && cal.fits(start, firstMinutes) {
				doses := 0
				if r.Intn(2) == 0 {
					doses = p.Doses.Min + r.Intn(p.Doses.Max-p.Doses.Min+1)
				}
				return scenario{p: p, cal: cal, start: start, doses: doses}
			}
		}
		d = d.AddDate(0, 0, 1)
	}
}

// checkSchedule asserts the invariants every generated schedule keeps.
func checkSchedule(t *testing.T, sc scenario, ss []Session, startTOD int) {
	t.Helper()
	p, cal, loc := sc.p, sc.cal, sc.cal.Location
	rules := newDoseRules(p)
	ids := map[string]bool{}
	for i, s := range ss {
		if ids[s.ID] {
			t.Errorf("duplicate id %s", s.ID)
		}
		ids[s.ID] = true
		if !live(s) {
			continue
		}
		d := dayOf(s.Start, loc)
		h, open := cal.hoursOn(d)
		if !open {
			t.Errorf("session %d (%s) on %s, a closed day", i, s.Kind, d.Format(time.DateOnly))
			continue
		}
		if !cal.fits(s.Start, int(s.End.Sub(s.Start).Minutes())) {
			t.Errorf("session %d (%s) %s-%s outside hours %s-%s", i, s.Kind, s.Start.In(loc).Format(time.Kitchen), s.End.In(loc).Format(time.Kitchen), hhmm(h.Open), hhmm(h.Close))
		}
		if tod := minuteOfDay(s.Start, loc); tod != startTOD && tod != h.Open {
			t.Errorf("session %d (%s) at local %s; want %s or the opening time %s", i, s.Kind, hhmm(tod), hhmm(startTOD), hhmm(h.Open))
		}
		if want := sessionMinutes(p, s.Kind); s.End.Sub(s.Start) != time.Duration(want)*time.Minute {
			t.Errorf("session %d (%s) lasts %v, want %d minutes", i, s.Kind, s.End.Sub(s.Start), want)
		}
	}
	prog := &Program{Sessions: ss}
	var doses []time.Time
	var doseNums []int
	week := map[[2]int]int{}
	for _, i := range liveDoses(prog, ss[0].PlanID) {
		d := dayOf(ss[i].Start, loc)
		if n := len(doses); n > 0 {
			gap := daysBetween(doses[n-1], d)
			if gap < p.Spacing.MinDays || (gap < 2 && !p.Spacing.AllowConsecutive) {
				t.Errorf("dose %d is %d days after the previous one; min %d, consecutive allowed %v", ss[i].Dose, gap, p.Spacing.MinDays, p.Spacing.AllowConsecutive)
			}
		}
		if rules.weekdays != nil && !rules.weekdays[d.Weekday()] {
			t.Errorf("dose %d on %s, not in %v", ss[i].Dose, d.Weekday(), p.Spacing.Weekdays)
		}
		y, w := d.ISOWeek()
		week[[2]int{y, w}]++
		if p.Spacing.PerWeekMax > 0 && week[[2]int{y, w}] > p.Spacing.PerWeekMax {
			t.Errorf("more than %d doses in week %d-%d", p.Spacing.PerWeekMax, y, w)
		}
		doses = append(doses, d)
		doseNums = append(doseNums, ss[i].Dose)
	}
	if len(doses) < p.Doses.Min || len(doses) > p.Doses.Max {
		t.Errorf("%d live doses, want %d to %d", len(doses), p.Doses.Min, p.Doses.Max)
	}
	// Integration visits fall after their dose and before the next one.
	for _, s := range ss {
		if s.Kind != SessionIntegration || !live(s) {
			continue
		}
		k := slices.Index(doseNums, s.Dose)
		if k < 0 {
			t.Errorf("integration visit %s follows dose %d, which is not live", s.ID, s.Dose)
			continue
		}
		d := dayOf(s.Start, loc)
		if !d.After(doses[k]) || (k+1 < len(doses) && !d.Before(doses[k+1])) {
			t.Errorf("integration visit for dose %d on %s, outside (%s, %s)", s.Dose, d.Format(time.DateOnly), doses[k].Format(time.DateOnly), func() string {
				if k+1 < len(doses) {
					return doses[k+1].Format(time.DateOnly)
				}
				return "-"
			}())
		}
	}
}

func TestSchedulePropertiesRandom(t *testing.T) {
	locs := []*time.Location{mustLoc(t, "America/New_York"), mustLoc(t, "Europe/Berlin"), mustLoc(t, "Australia/Sydney"), time.UTC}
	r := rand.New(rand.NewSource(20260308))
	for i := range 600 {
		sc := randomScenario(r, locs)
		if ps := ValidateProtocol(sc.p); len(ps) > 0 {
			t.Fatalf("case %d: generator made an invalid protocol: %v", i, ps)
		}
		req := ScheduleRequest{PlanID: "plan", Start: sc.start, Doses: sc.doses}
		ss, issues, err := Schedule(sc.p, req, sc.cal, seqIDs("s"))
		if err != nil {
			t.Fatalf("case %d: Schedule: %v", i, err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			startTOD := minuteOfDay(sc.start, sc.cal.Location)
			checkSchedule(t, sc, ss, startTOD)
			n := sc.doses
			if n == 0 {
				n = sc.p.Doses.Default
			}
			got := 0
			for _, s := range ss {
				if s.Kind == SessionDosing {
					got++
				}
				if s.Status != StatusProposed || s.PlanID != "plan" {
					t.Errorf("session %s: status %s plan %s, want proposed in plan", s.ID, s.Status, s.PlanID)
				}
			}
			if got != n {
				t.Errorf("%d doses, want %d", got, n)
			}
			if !slices.IsSortedFunc(ss, compareSessions) {
				t.Error("sessions are not in time order")
			}
			for _, is := range issues {
				if is.Code == IssueSpacingViolated || is.Code == IssuePerWeekExceeded || is.Code == IssueWeekdayNotAllowed {
					t.Errorf("generated schedule breaks a hard rule: %+v", is)
				}
			}
			// Deterministic: the same input gives the same output.
			ss2, issues2, err := Schedule(sc.p, req, sc.cal, seqIDs("s"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(ss, ss2); diff != "" {
				t.Errorf("second run differs (-first +second):\n%s", diff)
			}
			if diff := cmp.Diff(issues, issues2); diff != "" {
				t.Errorf("second run's issues differ (-first +second):\n%s", diff)
			}
		})
	}
}

// TestReplanPropertiesRandom cancels, misses or moves a random dose of random
// schedules and checks that the schedule still keeps every hard rule.
func TestReplanPropertiesRandom(t *testing.T) {
	locs := []*time.Location{mustLoc(t, "America/New_York"), time.UTC}
	r := rand.New(rand.NewSource(1101))
	for i := range 400 {
		sc := randomScenario(r, locs)
		ss, _, err := Schedule(sc.p, ScheduleRequest{PlanID: "plan", Start: sc.start, Doses: sc.doses}, sc.cal, seqIDs("s"))
		if err != nil {
			t.Fatalf("case %d: Schedule: %v", i, err)
		}
		prog := &Program{ID: "prog", Status: ProgramActive, ProtocolID: sc.p.ID, Start: sc.start,
			Plans: []Plan{{ID: "plan", ProtocolID: sc.p.ID, Kind: PlanInduction, Status: PlanActive}}, Sessions: ss}
		lookup := func(string) (Protocol, bool) { return sc.p, true }
		var doseIDs []string
		for _, s := range ss {
			if s.Kind == SessionDosing {
				doseIDs = append(doseIDs, s.ID)
			}
		}
		target := doseIDs[r.Intn(len(doseIDs))]
		action := r.Intn(3)
		want := len(doseIDs)
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			newID := seqIDs("n")
			switch action {
			case 0:
				if err := ApplySessionChange(prog, target, SessionChange{Status: StatusCancelled}, lookup, sc.cal, newID); err != nil {
					t.Fatalf("cancel: %v", err)
				}
			case 1:
				if err := ApplySessionChange(prog, target, SessionChange{Status: StatusBooked}, lookup, sc.cal, newID); err != nil {
					t.Fatalf("book: %v", err)
				}
				if err := ApplySessionChange(prog, target, SessionChange{Status: StatusNoShow}, lookup, sc.cal, newID); err != nil {
					t.Fatalf("noshow: %v", err)
				}
			case 2:
				// Move the dose later to a day that keeps the spacing with the
				// previous dose and the protocol's dose rules.
				s, _ := prog.Session(target)
				loc := sc.cal.Location
				var others []time.Time
				for _, i := range liveDoses(prog, "plan") {
					if prog.Sessions[i].Start.Before(s.Start) {
						others = append(others, dayOf(prog.Sessions[i].Start, loc))
					}
				}
				from := dayOf(s.Start, loc).AddDate(0, 0, 1+r.Intn(4))
				to, ok := newDoseRules(sc.p).next(sc.cal, from, others, minuteOfDay(sc.start, loc))
				if !ok {
					// No later day keeps the rules: change the dose another way.
					if err := ApplySessionChange(prog, target, SessionChange{Status: StatusCancelled}, lookup, sc.cal, newID); err != nil {
						t.Fatalf("cancel: %v", err)
					}
					break
				}
				if err := ApplySessionChange(prog, target, SessionChange{Start: to}, lookup, sc.cal, newID); err != nil {
					t.Fatalf("move: %v", err)
				}
			}
			n := 0
			for _, s := range prog.Sessions {
				if s.Kind == SessionDosing && live(s) {
					n++
				}
			}
			if n != want && !slices.ContainsFunc(prog.Issues, func(is ScheduleIssue) bool { return is.Code == IssueDosesBelowMinimum }) {
				t.Errorf("%d live doses after the change, want %d", n, want)
			}
			checkSchedule(t, sc, prog.Sessions, minuteOfDay(sc.start, sc.cal.Location))
			for _, is := range prog.Issues {
				if is.Code == IssueSpacingViolated || is.Code == IssuePerWeekExceeded || is.Code == IssueWeekdayNotAllowed {
					t.Errorf("re-planned schedule breaks a hard rule: %+v", is)
				}
			}
		})
	}
}

// TestScheduleKeepsLocalHourAcrossDST schedules weekly doses through both
// 2026 DST changes of New York and checks the local hour and the UTC offset.
func TestScheduleKeepsLocalHourAcrossDST(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	p := Protocol{ID: "weekly", Version: "1", Title: "W", Indications: []Indication{IndicationMDD}, Kind: PlanInduction, Route: RouteIV,
		Doses: IntRange{Min: 4, Max: 4, Default: 4}, Spacing: Spacing{MinDays: 7, MaxDays: 7}, DoseMinutes: 60}
	cal := DefaultCalendar(ny)
	for _, tt := range []struct {
		start       time.Time
		wantOffsets []int // hours from UTC of each dose
	}{
		{time.Date(2026, 2, 23, 9, 30, 0, 0, ny), []int{-5, -5, -4, -4}},  // spring forward on 8 March
		{time.Date(2026, 10, 19, 9, 30, 0, 0, ny), []int{-4, -4, -5, -5}}, // fall back on 1 November
	} {
		ss, _, err := Schedule(p, ScheduleRequest{PlanID: "p", Start: tt.start}, cal, seqIDs("s"))
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, s := range ss {
			if l := s.Start.In(ny); l.Hour() != 9 || l.Minute() != 30 {
				t.Errorf("dose %d at %s, want 09:30 local", s.Dose, l.Format(time.Kitchen))
			}
			_, off := s.Start.In(ny).Zone()
			got = append(got, off/3600)
		}
		if diff := cmp.Diff(tt.wantOffsets, got); diff != "" {
			t.Errorf("UTC offsets (-want +got):\n%s", diff)
		}
	}
}
