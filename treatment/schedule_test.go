package treatment

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// row is a session as the example tests compare it: local time as text.
type row struct {
	ID       string
	Kind     SessionKind
	Dose     int
	Status   SessionStatus
	At       string // "Mon 2026-10-26 10:00"
	Replaces string
}

const rowLayout = "Mon 2006-01-02 15:04"

func rows(ss []Session, loc *time.Location) []row {
	var out []row
	for _, s := range ss {
		at := ""
		if s.HasSlot() {
			at = s.Start.In(loc).Format(rowLayout)
		}
		out = append(out, row{ID: s.ID, Kind: s.Kind, Dose: s.Dose, Status: s.Status, At: at, Replaces: s.Replaces})
	}
	return out
}

func issueCodes(is []ScheduleIssue) []string {
	var out []string
	for _, i := range is {
		out = append(out, i.Code)
	}
	return out
}

// dailyCalendar is open every day 08:00-20:00.
func dailyCalendar(loc *time.Location) Calendar {
	cal := Calendar{Location: loc, Open: map[time.Weekday]Hours{}, Closed: map[string]bool{}}
	for _, wd := range allWeekdays {
		cal.Open[wd] = Hours{Open: 8 * 60, Close: 20 * 60}
	}
	return cal
}

// ivProgram schedules ivProtocol from Monday 26 October 2026 10:00 in New
// York (the series crosses the end of DST on 1 November).
func ivProgram(t *testing.T) (*Program, Calendar, func(string) (Protocol, bool)) {
	t.Helper()
	ny := mustLoc(t, "America/New_York")
	cal := dailyCalendar(ny)
	start := time.Date(2026, 10, 26, 10, 0, 0, 0, ny)
	ss, issues, err := Schedule(ivProtocol(), ScheduleRequest{PlanID: "ind", Start: start}, cal, seqIDs("s"))
	if err != nil {
		t.Fatalf("Schedule: %v", err)
	}
	prog := &Program{
		ID: "prog", ProtocolID: "iv-test", Status: ProgramActive, Start: start,
		Plans:    []Plan{{ID: "ind", ProtocolID: "iv-test", Kind: PlanInduction, Status: PlanActive}},
		Sessions: ss, Issues: issues,
	}
	lookup := func(id string) (Protocol, bool) {
		if id == "iv-test" {
			return ivProtocol(), true
		}
		return Protocol{}, false
	}
	return prog, cal, lookup
}

func TestScheduleIV(t *testing.T) {
	prog, cal, _ := ivProgram(t)
	want := []row{
		{"s1", SessionDosing, 1, StatusProposed, "Mon 2026-10-26 10:00", ""},
		{"s2", SessionIntegration, 1, StatusProposed, "Tue 2026-10-27 10:00", ""},
		{"s3", SessionDosing, 2, StatusProposed, "Wed 2026-10-28 10:00", ""},
		{"s4", SessionIntegration, 2, StatusProposed, "Thu 2026-10-29 10:00", ""},
		{"s5", SessionDosing, 3, StatusProposed, "Fri 2026-10-30 10:00", ""},
		{"s6", SessionIntegration, 3, StatusProposed, "Sat 2026-10-31 10:00", ""},
		// Not Sunday 1 November: it is in the ISO week that has three doses already.
		{"s7", SessionDosing, 4, StatusProposed, "Mon 2026-11-02 10:00", ""},
		{"s8", SessionIntegration, 4, StatusProposed, "Tue 2026-11-03 10:00", ""},
		{"s9", SessionDosing, 5, StatusProposed, "Wed 2026-11-04 10:00", ""},
		{"s10", SessionIntegration, 5, StatusProposed, "Thu 2026-11-05 10:00", ""},
		{"s11", SessionDosing, 6, StatusProposed, "Fri 2026-11-06 10:00", ""},
		{"s12", SessionIntegration, 6, StatusProposed, "Sat 2026-11-07 10:00", ""},
		{"s13", SessionReassessment, 0, StatusProposed, "Wed 2026-11-11 10:00", ""},
	}
	if diff := cmp.Diff(want, rows(prog.Sessions, cal.Location)); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	if len(prog.Issues) != 0 {
		t.Errorf("issues = %+v, want none", prog.Issues)
	}
	for _, s := range prog.Sessions {
		if got, want := s.End.Sub(s.Start), time.Duration(sessionMinutes(ivProtocol(), s.Kind))*time.Minute; got != want {
			t.Errorf("%s lasts %v, want %v", s.ID, got, want)
		}
	}
}

func TestScheduleVariants(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := dailyCalendar(ny)
	start := time.Date(2026, 3, 2, 9, 0, 0, 0, ny) // a Monday; DST starts 8 March
	t.Run("ptsd: twice a week, two integration visits", func(t *testing.T) {
		ss, issues, err := Schedule(ivProtocol(), ScheduleRequest{PlanID: "p", Start: start, Indication: IndicationPTSD}, cal, seqIDs("s"))
		if err != nil {
			t.Fatal(err)
		}
		var doses, visits []string
		for _, s := range ss {
			switch s.Kind {
			case SessionDosing:
				doses = append(doses, s.Start.In(ny).Format(rowLayout))
			case SessionIntegration:
				visits = append(visits, s.Start.In(ny).Format(rowLayout))
			}
		}
		wantDoses := []string{"Mon 2026-03-02 09:00", "Thu 2026-03-05 09:00", "Mon 2026-03-09 09:00", "Thu 2026-03-12 09:00", "Mon 2026-03-16 09:00", "Thu 2026-03-19 09:00"}
		if diff := cmp.Diff(wantDoses, doses); diff != "" {
			t.Errorf("doses (-want +got):\n%s", diff)
		}
		if len(visits) != 12 {
			t.Errorf("%d integration visits, want 12", len(visits))
		}
		if len(issues) != 0 {
			t.Errorf("issues = %+v", issues)
		}
	})
	t.Run("trd: 4 doses allowed", func(t *testing.T) {
		ss, _, err := Schedule(ivProtocol(), ScheduleRequest{PlanID: "p", Start: start, Indication: IndicationTRD, Doses: 4}, cal, seqIDs("s"))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range ss {
			if s.Kind == SessionDosing {
				n++
			}
		}
		if n != 4 {
			t.Errorf("%d doses, want 4", n)
		}
	})
}

func TestScheduleRequestErrors(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := DefaultCalendar(ny)
	cal.Closed["2026-10-27"] = true
	mon := time.Date(2026, 10, 26, 10, 0, 0, 0, ny)
	study := ivProtocol()
	study.Spacing = Spacing{MinDays: 2, MaxDays: 3, Weekdays: []string{"mon", "wed", "fri"}, PerWeekMax: 3, MaxSpanDays: 14}
	booster := Protocol{ID: "b", Kind: PlanBooster}
	tests := []struct {
		name  string
		p     Protocol
		req   ScheduleRequest
		kind  Kind
		field []string
	}{
		{"doses out of range", ivProtocol(), ScheduleRequest{Start: mon, Doses: 7}, KindInvalid, []string{"doses"}},
		{"variant doses", ivProtocol(), ScheduleRequest{Start: mon, Doses: 3, Indication: IndicationTRD}, KindInvalid, []string{"doses"}},
		{"route", ivProtocol(), ScheduleRequest{Start: mon, Route: RouteSublingual}, KindInvalid, []string{"route"}},
		{"no start", ivProtocol(), ScheduleRequest{}, KindInvalid, []string{"start"}},
		{"closed weekday", ivProtocol(), ScheduleRequest{Start: time.Date(2026, 10, 25, 10, 0, 0, 0, ny)}, KindInvalid, []string{"start"}},
		{"closed date", ivProtocol(), ScheduleRequest{Start: time.Date(2026, 10, 27, 10, 0, 0, 0, ny)}, KindInvalid, []string{"start"}},
		{"before opening", ivProtocol(), ScheduleRequest{Start: time.Date(2026, 10, 26, 7, 0, 0, 0, ny)}, KindInvalid, []string{"start"}},
		{"does not fit before closing", ivProtocol(), ScheduleRequest{Start: time.Date(2026, 10, 26, 17, 0, 0, 0, ny)}, KindInvalid, []string{"start"}},
		{"not a dosing weekday", study, ScheduleRequest{Start: time.Date(2026, 11, 3, 10, 0, 0, 0, ny)}, KindInvalid, []string{"start"}},
		{"unknown indication", Protocol{ID: "x", Indications: []Indication{IndicationTRD}}, ScheduleRequest{Start: mon, Indication: IndicationAnxiety}, KindInvalid, []string{"indication"}},
		{"not an induction", booster, ScheduleRequest{Start: mon}, KindInvalid, []string{"protocolId"}},
		{"all at once", ivProtocol(), ScheduleRequest{Start: time.Date(2026, 10, 25, 10, 0, 0, 0, ny), Doses: 9, Route: RouteIntranasal}, KindInvalid, []string{"doses", "route", "start"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Schedule(tt.p, tt.req, cal, seqIDs("s"))
			if ErrorKind(err) != tt.kind {
				t.Fatalf("error = %v, want kind %s", err, tt.kind)
			}
			var e *Error
			for u := err; u != nil; {
				if x, ok := u.(*Error); ok {
					e = x
					break
				}
				w, ok := u.(interface{ Unwrap() error })
				if !ok {
					break
				}
				u = w.Unwrap()
			}
			if diff := cmp.Diff(tt.field, fields(e.Fields)); diff != "" {
				t.Errorf("fields (-want +got):\n%s\n%v", diff, err)
			}
		})
	}
}

func TestScheduleClosuresRecordIssues(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := dailyCalendar(ny)
	for d := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC); d.Day() <= 20; d = d.AddDate(0, 0, 1) {
		cal.Closed[d.Format(time.DateOnly)] = true
	}
	ss, issues, err := Schedule(ivProtocol(), ScheduleRequest{PlanID: "p", Start: time.Date(2026, 10, 26, 10, 0, 0, 0, ny)}, cal, seqIDs("s"))
	if err != nil {
		t.Fatal(err)
	}
	var doses []string
	for _, s := range ss {
		if s.Kind == SessionDosing {
			doses = append(doses, s.Start.In(ny).Format(rowLayout))
		}
	}
	want := []string{"Mon 2026-10-26 10:00", "Wed 2026-10-28 10:00", "Fri 2026-10-30 10:00", "Sat 2026-11-21 10:00", "Mon 2026-11-23 10:00", "Wed 2026-11-25 10:00"}
	if diff := cmp.Diff(want, doses); diff != "" {
		t.Errorf("doses (-want +got):\n%s", diff)
	}
	// Dose 3's integration visit stays on Saturday 31 October; the Sunday
	// before the closure is in the same ISO week, so dose 4 waits for 21 November.
	if diff := cmp.Diff([]string{IssueSpacingExceeded, IssueWindowExceeded}, issueCodes(issues)); diff != "" {
		t.Errorf("issue codes (-want +got):\n%s\n%+v", diff, issues)
	}
}

func TestApplySessionChangeCancelDose(t *testing.T) {
	prog, cal, lookup := ivProgram(t)
	if err := ApplySessionChange(prog, "s5", SessionChange{Status: StatusCancelled}, lookup, cal, seqIDs("n")); err != nil {
		t.Fatal(err)
	}
	want := []row{
		{"s1", SessionDosing, 1, StatusProposed, "Mon 2026-10-26 10:00", ""},
		{"s2", SessionIntegration, 1, StatusProposed, "Tue 2026-10-27 10:00", ""},
		{"s3", SessionDosing, 2, StatusProposed, "Wed 2026-10-28 10:00", ""},
		{"s4", SessionIntegration, 2, StatusProposed, "Thu 2026-10-29 10:00", ""},
		{"s5", SessionDosing, 3, StatusCancelled, "Fri 2026-10-30 10:00", ""},
		{"n1", SessionDosing, 3, StatusProposed, "Sat 2026-10-31 10:00", "s5"},
		{"s6", SessionIntegration, 3, StatusCancelled, "Sat 2026-10-31 10:00", ""},
		{"n2", SessionIntegration, 3, StatusProposed, "Sun 2026-11-01 10:00", ""},
		{"s7", SessionDosing, 4, StatusProposed, "Mon 2026-11-02 10:00", ""},
		{"s8", SessionIntegration, 4, StatusProposed, "Tue 2026-11-03 10:00", ""},
		{"s9", SessionDosing, 5, StatusProposed, "Wed 2026-11-04 10:00", ""},
		{"s10", SessionIntegration, 5, StatusProposed, "Thu 2026-11-05 10:00", ""},
		{"s11", SessionDosing, 6, StatusProposed, "Fri 2026-11-06 10:00", ""},
		{"s12", SessionIntegration, 6, StatusProposed, "Sat 2026-11-07 10:00", ""},
		{"s13", SessionReassessment, 0, StatusProposed, "Wed 2026-11-11 10:00", ""},
	}
	if diff := cmp.Diff(want, rows(prog.Sessions, cal.Location)); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	if len(prog.Issues) != 0 {
		t.Errorf("issues = %+v, want none", prog.Issues)
	}
}

func TestApplySessionChangeNoShowDose(t *testing.T) {
	prog, cal, lookup := ivProgram(t)
	newID := seqIDs("n")
	for _, st := range []SessionStatus{StatusBooked, StatusNoShow} {
		if err := ApplySessionChange(prog, "s3", SessionChange{Status: st}, lookup, cal, newID); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	want := []row{
		{"s1", SessionDosing, 1, StatusProposed, "Mon 2026-10-26 10:00", ""},
		{"s2", SessionIntegration, 1, StatusProposed, "Tue 2026-10-27 10:00", ""},
		{"s3", SessionDosing, 2, StatusNoShow, "Wed 2026-10-28 10:00", ""},
		{"n1", SessionDosing, 2, StatusProposed, "Thu 2026-10-29 10:00", "s3"},
		{"s4", SessionIntegration, 2, StatusCancelled, "Thu 2026-10-29 10:00", ""},
		{"n2", SessionIntegration, 2, StatusProposed, "Fri 2026-10-30 10:00", ""},
		// Dose 3 would follow the replacement the next day: it shifts to Saturday.
		{"s5", SessionDosing, 3, StatusProposed, "Sat 2026-10-31 10:00", ""},
		{"s6", SessionIntegration, 3, StatusProposed, "Sun 2026-11-01 10:00", ""},
		{"s7", SessionDosing, 4, StatusProposed, "Mon 2026-11-02 10:00", ""},
		{"s8", SessionIntegration, 4, StatusProposed, "Tue 2026-11-03 10:00", ""},
		{"s9", SessionDosing, 5, StatusProposed, "Wed 2026-11-04 10:00", ""},
		{"s10", SessionIntegration, 5, StatusProposed, "Thu 2026-11-05 10:00", ""},
		{"s11", SessionDosing, 6, StatusProposed, "Fri 2026-11-06 10:00", ""},
		{"s12", SessionIntegration, 6, StatusProposed, "Sat 2026-11-07 10:00", ""},
		{"s13", SessionReassessment, 0, StatusProposed, "Wed 2026-11-11 10:00", ""},
	}
	if diff := cmp.Diff(want, rows(prog.Sessions, cal.Location)); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	if len(prog.Issues) != 0 {
		t.Errorf("issues = %+v, want none", prog.Issues)
	}
}

func TestApplySessionChangeMoveDose(t *testing.T) {
	prog, cal, lookup := ivProgram(t)
	ny := cal.Location
	newID := seqIDs("n")
	if err := ApplySessionChange(prog, "s9", SessionChange{Status: StatusBooked}, lookup, cal, newID); err != nil {
		t.Fatal(err)
	}
	// Dose 4 moves from Monday to Tuesday afternoon.
	ch := SessionChange{Start: time.Date(2026, 11, 3, 14, 0, 0, 0, ny)}
	if err := ApplySessionChange(prog, "s7", ch, lookup, cal, newID); err != nil {
		t.Fatal(err)
	}
	want := []row{
		{"s1", SessionDosing, 1, StatusProposed, "Mon 2026-10-26 10:00", ""},
		{"s2", SessionIntegration, 1, StatusProposed, "Tue 2026-10-27 10:00", ""},
		{"s3", SessionDosing, 2, StatusProposed, "Wed 2026-10-28 10:00", ""},
		{"s4", SessionIntegration, 2, StatusProposed, "Thu 2026-10-29 10:00", ""},
		{"s5", SessionDosing, 3, StatusProposed, "Fri 2026-10-30 10:00", ""},
		{"s6", SessionIntegration, 3, StatusProposed, "Sat 2026-10-31 10:00", ""},
		{"s7", SessionDosing, 4, StatusProposed, "Tue 2026-11-03 14:00", ""},
		{"s8", SessionIntegration, 4, StatusProposed, "Wed 2026-11-04 10:00", ""},
		// Dose 5 was booked for Wednesday; it shifts and needs booking again.
		{"s9", SessionDosing, 5, StatusProposed, "Thu 2026-11-05 10:00", ""},
		{"s10", SessionIntegration, 5, StatusProposed, "Fri 2026-11-06 10:00", ""},
		{"s11", SessionDosing, 6, StatusProposed, "Sat 2026-11-07 10:00", ""},
		{"s12", SessionIntegration, 6, StatusProposed, "Sun 2026-11-08 10:00", ""},
		{"s13", SessionReassessment, 0, StatusProposed, "Thu 2026-11-12 10:00", ""},
	}
	if diff := cmp.Diff(want, rows(prog.Sessions, ny)); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	s7, _ := prog.Session("s7")
	if got := s7.End.Sub(s7.Start); got != 2*time.Hour {
		t.Errorf("moved dose lasts %v, want its 2 hours", got)
	}
	if len(prog.Issues) != 0 {
		t.Errorf("issues = %+v, want none", prog.Issues)
	}
}

func TestApplySessionChangeWindowIssue(t *testing.T) {
	prog, cal, lookup := ivProgram(t)
	// Moving dose 6 four weeks out breaks the 21-day window and the 7-day spacing.
	ch := SessionChange{Start: time.Date(2026, 11, 27, 10, 0, 0, 0, cal.Location)}
	if err := ApplySessionChange(prog, "s11", ch, lookup, cal, seqIDs("n")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{IssueSpacingExceeded, IssueWindowExceeded}, issueCodes(prog.Issues)); diff != "" {
		t.Errorf("issue codes (-want +got):\n%s", diff)
	}
	for _, is := range prog.Issues {
		if is.Session != "s11" || is.Message == "" {
			t.Errorf("issue %+v, want one naming s11 with a message", is)
		}
	}
	// The reassessment follows the last dose.
	r, _ := prog.Session("s13")
	if got := r.Start.In(cal.Location).Format(rowLayout); got != "Wed 2026-12-02 10:00" {
		t.Errorf("reassessment at %s, want Wed 2026-12-02 10:00", got)
	}
	// Moving it back clears the issues: they are recomputed every time.
	ch = SessionChange{Start: time.Date(2026, 11, 6, 10, 0, 0, 0, cal.Location)}
	if err := ApplySessionChange(prog, "s11", ch, lookup, cal, seqIDs("m")); err != nil {
		t.Fatal(err)
	}
	if len(prog.Issues) != 0 {
		t.Errorf("issues = %+v, want none", prog.Issues)
	}
}

func TestApplySessionChangeErrors(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	at := func(d, h, m int) time.Time { return time.Date(2026, 10, d, h, m, 0, 0, ny) }
	setup := func(t *testing.T) (*Program, Calendar, func(string) (Protocol, bool)) {
		prog, _, lookup := ivProgram(t)
		cal := dailyCalendar(ny)
		cal.Closed["2026-10-29"] = true
		prog.Sessions[0].Status = StatusFulfilled // s1
		prog.Sessions[2].Status = StatusCancelled // s3
		prog.Plans = append(prog.Plans, Plan{ID: "boost", ProtocolID: "b", Kind: PlanBooster, Status: PlanActive})
		prog.Sessions = append(prog.Sessions, Session{ID: "w1", PlanID: "boost", Kind: SessionBooster, Status: StatusProposed, Dose: 1,
			Window: &Period{Start: at(1, 0, 0).AddDate(0, 3, 0), End: at(1, 0, 0).AddDate(0, 6, 0)}})
		return prog, cal, lookup
	}
	tests := []struct {
		name    string
		session string
		ch      SessionChange
		kind    Kind
		fields  []string
	}{
		{"unknown session", "nope", SessionChange{Status: StatusBooked}, KindNotFound, nil},
		{"fulfilled to booked", "s1", SessionChange{Status: StatusBooked}, KindConflict, nil},
		{"out of cancelled", "s3", SessionChange{Status: StatusProposed}, KindConflict, nil},
		{"cancelled to booked", "s3", SessionChange{Status: StatusBooked}, KindConflict, nil},
		{"proposed to noshow", "s5", SessionChange{Status: StatusNoShow}, KindConflict, nil},
		{"move a fulfilled session", "s1", SessionChange{Start: at(27, 10, 0)}, KindConflict, nil},
		{"cancel and move", "s5", SessionChange{Status: StatusCancelled, Start: at(31, 10, 0)}, KindInvalid, []string{"start"}},
		{"closed day", "s5", SessionChange{Start: at(29, 10, 0)}, KindInvalid, []string{"start"}},
		{"before opening", "s5", SessionChange{Start: at(30, 7, 0)}, KindInvalid, []string{"start"}},
		{"after closing", "s5", SessionChange{Start: at(30, 19, 0)}, KindInvalid, []string{"end"}},
		{"end before start", "s5", SessionChange{Start: at(30, 10, 0), End: at(30, 9, 0)}, KindInvalid, []string{"end"}},
		{"book a window without a slot", "w1", SessionChange{Status: StatusBooked}, KindInvalid, []string{"start", "end"}},
		{"book a window with only a start", "w1", SessionChange{Status: StatusBooked, Start: at(30, 10, 0).AddDate(0, 4, 0)}, KindInvalid, []string{"end"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prog, cal, lookup := setup(t)
			before := slices.Clone(prog.Sessions)
			err := ApplySessionChange(prog, tt.session, tt.ch, lookup, cal, seqIDs("n"))
			if ErrorKind(err) != tt.kind {
				t.Fatalf("error = %v, want kind %s", err, tt.kind)
			}
			var got []string
			if e, ok := err.(*Error); ok {
				got = fields(e.Fields)
			}
			if diff := cmp.Diff(tt.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, prog.Sessions); diff != "" {
				t.Errorf("a failed change changed the sessions (-before +after):\n%s", diff)
			}
		})
	}
	t.Run("revoked programme", func(t *testing.T) {
		prog, cal, lookup := setup(t)
		prog.Status = ProgramRevoked
		if err := ApplySessionChange(prog, "s5", SessionChange{Status: StatusBooked}, lookup, cal, seqIDs("n")); ErrorKind(err) != KindConflict {
			t.Errorf("error = %v, want conflict", err)
		}
	})
	t.Run("book a window with a slot", func(t *testing.T) {
		prog, cal, lookup := setup(t)
		start := time.Date(2027, 2, 10, 9, 0, 0, 0, ny)
		ch := SessionChange{Status: StatusBooked, Start: start, End: start.Add(2 * time.Hour)}
		if err := ApplySessionChange(prog, "w1", ch, lookup, cal, seqIDs("n")); err != nil {
			t.Fatal(err)
		}
		w, _ := prog.Session("w1")
		if w.Status != StatusBooked || !w.Start.Equal(start) || w.Window == nil {
			t.Errorf("booster = %+v, want booked at %v keeping its window", w, start)
		}
	})
}

func TestApplySessionChangeCompletesPlans(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := dailyCalendar(ny)
	at := func(d int) time.Time { return time.Date(2026, 6, d, 10, 0, 0, 0, ny) }
	prog := &Program{
		ID: "prog", Status: ProgramActive,
		Plans: []Plan{{ID: "m", ProtocolID: "maint", Kind: PlanMaintenance, Status: PlanActive}},
		Sessions: []Session{
			{ID: "a", PlanID: "m", Kind: SessionMaintenance, Status: StatusBooked, Dose: 1, Start: at(1), End: at(1).Add(time.Hour)},
			{ID: "b", PlanID: "m", Kind: SessionMaintenance, Status: StatusBooked, Dose: 2, Start: at(8), End: at(8).Add(time.Hour)},
		},
	}
	maint := Protocol{ID: "maint", Kind: PlanMaintenance, DoseMinutes: 60, Maintenance: &MaintenanceRule{IntervalDays: 7, Count: IntRange{Min: 1, Max: 4, Default: 2}}}
	lookup := func(string) (Protocol, bool) { return maint, true }
	newID := seqIDs("n")
	if err := ApplySessionChange(prog, "a", SessionChange{Status: StatusFulfilled}, lookup, cal, newID); err != nil {
		t.Fatal(err)
	}
	if prog.Plans[0].Status != PlanActive || prog.Status != ProgramActive {
		t.Errorf("after one of two: plan %s programme %s, want active", prog.Plans[0].Status, prog.Status)
	}
	// A missed maintenance session is replaced the next open day.
	if err := ApplySessionChange(prog, "b", SessionChange{Status: StatusNoShow}, lookup, cal, newID); err != nil {
		t.Fatal(err)
	}
	want := []row{
		{"a", SessionMaintenance, 1, StatusFulfilled, "Mon 2026-06-01 10:00", ""},
		{"b", SessionMaintenance, 2, StatusNoShow, "Mon 2026-06-08 10:00", ""},
		{"n1", SessionMaintenance, 2, StatusProposed, "Tue 2026-06-09 10:00", "b"},
	}
	if diff := cmp.Diff(want, rows(prog.Sessions, ny)); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	if err := ApplySessionChange(prog, "n1", SessionChange{Status: StatusFulfilled}, lookup, cal, newID); err != nil {
		t.Fatal(err)
	}
	if prog.Plans[0].Status != PlanCompleted || prog.Status != ProgramCompleted {
		t.Errorf("all final: plan %s programme %s, want completed", prog.Plans[0].Status, prog.Status)
	}
}

func TestScheduleFollowOnBooster(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := DefaultCalendar(ny)
	booster := Protocol{ID: "booster-3to6mo", Kind: PlanBooster, DoseMinutes: 120,
		Booster: &BoosterRule{Count: IntRange{Min: 1, Max: 2, Default: 1}, WindowStartMonths: 3, WindowEndMonths: 6}}
	after := time.Date(2026, 1, 15, 14, 0, 0, 0, ny)
	day := func(m time.Month, d int) time.Time { return time.Date(2026, m, d, 0, 0, 0, 0, ny) }
	tests := []struct {
		count int
		want  []Period
	}{
		{0, []Period{{day(4, 15), day(7, 15)}}},
		{2, []Period{{day(4, 15), day(5, 30)}, {day(5, 30), day(7, 15)}}},
	}
	for _, tt := range tests {
		ss, issues, err := ScheduleFollowOn(booster, FollowOnRequest{PlanID: "b", After: after, Count: tt.count}, cal, seqIDs("b"))
		if err != nil {
			t.Fatal(err)
		}
		var got []Period
		for i, s := range ss {
			if s.HasSlot() || s.Status != StatusProposed || s.Kind != SessionBooster || s.Dose != i+1 || s.PlanID != "b" {
				t.Errorf("booster %+v, want a proposed window-only booster %d", s, i+1)
			}
			got = append(got, *s.Window)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("count %d windows (-want +got):\n%s", tt.count, diff)
		}
		if len(issues) != 0 {
			t.Errorf("issues = %+v", issues)
		}
	}
	_, _, err := ScheduleFollowOn(booster, FollowOnRequest{PlanID: "b", After: after, Count: 3}, cal, seqIDs("b"))
	if e, ok := err.(*Error); !ok || e.Kind != KindInvalid || !slices.Equal(fields(e.Fields), []string{"count"}) {
		t.Errorf("count 3: error = %v, want invalid count", err)
	}
	relapse := Protocol{ID: "booster-on-relapse", Kind: PlanBooster, DoseMinutes: 120, Relapse: &RelapseRule{RiseBy: 5, Threshold: 10}}
	ss, _, err := ScheduleFollowOn(relapse, FollowOnRequest{PlanID: "r", After: after}, cal, seqIDs("r"))
	if err != nil || len(ss) != 0 {
		t.Errorf("booster-on-relapse: %d sessions, err %v; want none", len(ss), err)
	}
	_, _, err = ScheduleFollowOn(ivProtocol(), FollowOnRequest{PlanID: "x", After: after}, cal, seqIDs("x"))
	if ErrorKind(err) != KindInvalid {
		t.Errorf("induction protocol: error = %v, want invalid", err)
	}
}

func TestScheduleFollowOnMaintenance(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := DefaultCalendar(ny)
	cal.Closed["2026-11-20"] = true
	weekly := Protocol{ID: "maintenance-weekly", Kind: PlanMaintenance, DoseMinutes: 120,
		Maintenance: &MaintenanceRule{IntervalDays: 7, Count: IntRange{Min: 1, Max: 12, Default: 4}}}
	monthly := Protocol{ID: "maintenance-monthly", Kind: PlanMaintenance, DoseMinutes: 120,
		Maintenance: &MaintenanceRule{IntervalMonths: 1, Count: IntRange{Min: 1, Max: 12, Default: 4}}}
	fri := time.Date(2026, 11, 6, 10, 0, 0, 0, ny)
	tests := []struct {
		name string
		p    Protocol
		req  FollowOnRequest
		want []string
	}{
		{"weekly from the last dose", weekly, FollowOnRequest{PlanID: "m", After: fri}, []string{
			"Fri 2026-11-13 10:00", "Sat 2026-11-21 10:00", "Fri 2026-11-27 10:00", "Fri 2026-12-04 10:00"}},
		{"weekly with a start", weekly, FollowOnRequest{PlanID: "m", After: fri, Count: 2, Start: time.Date(2026, 11, 10, 15, 0, 0, 0, ny)}, []string{
			"Tue 2026-11-10 15:00", "Tue 2026-11-17 15:00"}},
		{"monthly keeps the day of the month", monthly, FollowOnRequest{PlanID: "m", After: time.Date(2026, 12, 31, 9, 0, 0, 0, ny), Count: 5}, []string{
			// 31 January 2027 is a Sunday (closed): Monday 1 February.
			// 28 February is a Sunday too: Monday 1 March.
			"Mon 2027-02-01 09:00", "Mon 2027-03-01 09:00", "Wed 2027-03-31 09:00", "Fri 2027-04-30 09:00", "Mon 2027-05-31 09:00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ss, _, err := ScheduleFollowOn(tt.p, tt.req, cal, seqIDs("m"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, s := range ss {
				got = append(got, s.Start.In(ny).Format(rowLayout))
				if s.Kind != SessionMaintenance || s.Dose != i+1 || s.Status != StatusProposed || s.End.Sub(s.Start) != 2*time.Hour {
					t.Errorf("session %+v", s)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("sessions (-want +got):\n%s", diff)
			}
		})
	}
	for name, req := range map[string]FollowOnRequest{
		"closed start":        {PlanID: "m", After: fri, Start: time.Date(2026, 11, 8, 10, 0, 0, 0, ny)},
		"start before after":  {PlanID: "m", After: fri, Start: time.Date(2026, 11, 5, 10, 0, 0, 0, ny)},
		"count out of range":  {PlanID: "m", After: fri, Count: 13},
		"no induction's dose": {PlanID: "m"},
	} {
		if _, _, err := ScheduleFollowOn(weekly, req, cal, seqIDs("m")); ErrorKind(err) != KindInvalid {
			t.Errorf("%s: error = %v, want invalid", name, err)
		}
	}
}

func TestProposeRelapseBooster(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	cal := DefaultCalendar(ny)
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, ny)
	prog := &Program{
		ID: "prog", Status: ProgramCompleted,
		Plans:        []Plan{{ID: "ind", Kind: PlanInduction, Status: PlanCompleted}, {ID: "rel", ProtocolID: "booster-on-relapse", Kind: PlanBooster, Status: PlanActive}},
		Measurements: []Measurement{{ID: "m1", Instrument: InstrumentPHQ9, Total: ip(14), Effective: now.Add(-time.Hour)}},
	}
	newID := seqIDs("r")
	ProposeRelapseBooster(prog, "rel", now, cal, newID)
	want := []Session{{ID: "r1", PlanID: "rel", Kind: SessionBooster, Status: StatusProposed, Dose: 1,
		Window: &Period{Start: now, End: time.Date(2026, 6, 15, 12, 0, 0, 0, ny)}}}
	if diff := cmp.Diff(want, prog.Sessions); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	if prog.Status != ProgramActive {
		t.Errorf("programme %s, want active again", prog.Status)
	}
	ProposeRelapseBooster(prog, "rel", now.Add(time.Hour), cal, newID)
	if len(prog.Sessions) != 1 {
		t.Fatalf("a pending booster got a second one: %d sessions", len(prog.Sessions))
	}
	// Given; the same PHQ-9 does not propose another.
	prog.Sessions[0].Status = StatusFulfilled
	prog.Sessions[0].Start = now.AddDate(0, 0, 3)
	prog.Sessions[0].End = prog.Sessions[0].Start.Add(2 * time.Hour)
	ProposeRelapseBooster(prog, "rel", now.AddDate(0, 0, 5), cal, newID)
	if len(prog.Sessions) != 1 {
		t.Fatalf("the same PHQ-9 proposed another booster")
	}
	// A newer PHQ-9 that still fires the rule does.
	prog.Measurements = append(prog.Measurements, Measurement{ID: "m2", Instrument: InstrumentPHQ9, Total: ip(15), Effective: now.AddDate(0, 0, 20)})
	ProposeRelapseBooster(prog, "rel", now.AddDate(0, 0, 20), cal, newID)
	if len(prog.Sessions) != 2 || prog.Sessions[1].Dose != 2 || prog.Sessions[1].ID != "r2" {
		t.Errorf("sessions = %+v, want a second booster r2", prog.Sessions)
	}
	// Unknown and revoked plans are left alone.
	ProposeRelapseBooster(prog, "nope", now, cal, newID)
	prog.Plans[1].Status = PlanRevoked
	prog.Sessions[1].Status = StatusCancelled
	ProposeRelapseBooster(prog, "rel", now.AddDate(0, 1, 0), cal, newID)
	if len(prog.Sessions) != 2 {
		t.Errorf("revoked or unknown plan got a booster")
	}
}

func TestScheduleSparseCalendar(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	mondays := Calendar{Location: ny, Open: map[time.Weekday]Hours{time.Monday: {Open: 9 * 60, Close: 17 * 60}}, Closed: map[string]bool{}}
	start := time.Date(2026, 10, 26, 9, 0, 0, 0, ny)
	t.Run("weekly doses break the window", func(t *testing.T) {
		p := ivProtocol()
		p.Integration = nil
		p.Reassessment = nil
		ss, issues, err := Schedule(p, ScheduleRequest{PlanID: "p", Start: start}, mondays, seqIDs("s"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ss) != 6 || ss[5].Start.In(ny).Format(rowLayout) != "Mon 2026-11-30 09:00" {
			t.Errorf("sessions = %v", rows(ss, ny))
		}
		if diff := cmp.Diff([]string{IssueWindowExceeded}, issueCodes(issues)); diff != "" {
			t.Errorf("issue codes (-want +got):\n%s", diff)
		}
	})
	t.Run("integration that cannot fit is reported", func(t *testing.T) {
		ss, issues, err := Schedule(ivProtocol(), ScheduleRequest{PlanID: "p", Start: start, Doses: 6}, mondays, seqIDs("s"))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range ss {
			if s.Kind == SessionIntegration {
				n++
			}
		}
		// Only the last dose has a Monday before no next dose.
		if n != 1 || !slices.Contains(issueCodes(issues), IssueIntegrationMissing) {
			t.Errorf("%d integration visits, issues %v; want 1 and integration-missing", n, issueCodes(issues))
		}
	})
	t.Run("no dosing day at all", func(t *testing.T) {
		p := ivProtocol()
		p.Preparation = &Step{Title: "Prep", DaysBefore: 2, Minutes: 60}
		p.Spacing.Weekdays = []string{"wed"}
		_, _, err := Schedule(p, ScheduleRequest{PlanID: "p", Start: start}, mondays, seqIDs("s"))
		if ErrorKind(err) != KindInvalid {
			t.Errorf("error = %v, want invalid", err)
		}
	})
}
