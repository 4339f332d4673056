package treatment

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// searchDays bounds every forward search for an open day, so that a calendar
// with no usable day ends in an error instead of a loop.
const searchDays = 400

// relapseWindowDays is how long a relapse booster proposal stays open.
const relapseWindowDays = 14

// Schedule issue codes.
const (
	IssueWindowExceeded      = "window-exceeded"      // doses span more than spacing.maxSpanDays
	IssueSpacingExceeded     = "spacing-exceeded"     // two doses further apart than spacing.maxDays
	IssueSpacingViolated     = "spacing-violated"     // two doses closer than spacing.minDays, or on consecutive days
	IssuePerWeekExceeded     = "per-week-exceeded"    // more doses in an ISO week than spacing.perWeekMax
	IssueWeekdayNotAllowed   = "weekday-not-allowed"  // a dose on a weekday outside spacing.weekdays
	IssueDosesBelowMinimum   = "doses-below-minimum"  // fewer live doses than doses.min
	IssueIntegrationMissing  = "integration-missing"  // a dose has fewer integration visits than the protocol asks
	IssueReassessmentOutside = "reassessment-outside" // the reassessment is outside its window after the last dose
)

// ScheduleRequest asks for an induction plan's sessions.
type ScheduleRequest struct {
	PlanID string
	// Start is the first session's clinic-local start; it must fall on an open
	// day and the session must fit inside that day's hours.
	Start time.Time
	// Doses is the number of doses; 0 = the protocol's default (after ForIndication).
	Doses int
	// Route is "" for the protocol's default; otherwise p.Route or one of p.Routes.
	Route      Route
	Indication Indication
}

// FollowOnRequest asks for a booster or maintenance plan's sessions.
type FollowOnRequest struct {
	PlanID string
	// After is the induction's last dose start (clinic-local).
	After time.Time
	// Count is the number of boosters or maintenance sessions; 0 = the protocol's default.
	Count int
	// Start is the first maintenance session; zero = After plus one interval, at After's local time.
	Start time.Time
}

// SessionChange changes a session's status and/or moves it. Zero fields are unchanged.
type SessionChange struct {
	Status     SessionStatus
	Start, End time.Time
}

// ---- calendar arithmetic -------------------------------------------------
//
// Days are civil dates represented as UTC midnights, so that day arithmetic
// never meets a DST change; clock times are built with time.Date in the
// clinic's location, so sessions keep their local wall-clock time across DST.

func (c Calendar) loc() *time.Location {
	if c.Location == nil {
		return time.UTC
	}
	return c.Location
}

func dayOf(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

func addDays(d time.Time, n int) time.Time { return d.AddDate(0, 0, n) }

func daysBetween(a, b time.Time) int { return int(b.Sub(a).Hours() / 24) }

// addMonths adds n months to a civil day, clamping to the last day of the
// month (31 January + 1 month = 28 or 29 February).
func addMonths(d time.Time, n int) time.Time {
	first := time.Date(d.Year(), d.Month()+time.Month(n), 1, 0, 0, 0, 0, time.UTC)
	last := first.AddDate(0, 1, -1).Day()
	return time.Date(first.Year(), first.Month(), min(d.Day(), last), 0, 0, 0, 0, time.UTC)
}

func minuteOfDay(t time.Time, loc *time.Location) int {
	t = t.In(loc)
	return t.Hour()*60 + t.Minute()
}

func hhmm(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

// hoursOn returns the opening hours of a civil day, if the clinic is open.
func (c Calendar) hoursOn(d time.Time) (Hours, bool) {
	if c.Closed[d.Format(time.DateOnly)] {
		return Hours{}, false
	}
	h, ok := c.Open[d.Weekday()]
	return h, ok && h.Close > h.Open
}

// at returns the local time at minute tod of civil day d, and false when that
// wall-clock time does not exist (a DST gap).
func (c Calendar) at(d time.Time, tod int) (time.Time, bool) {
	t := time.Date(d.Year(), d.Month(), d.Day(), tod/60, tod%60, 0, 0, c.loc())
	return t, t.Day() == d.Day() && t.Hour()*60+t.Minute() == tod
}

// endMinute is the wall-clock minute at which a session on day d ending at
// end ends (1440 for midnight of the next day, -1 when later still).
func (c Calendar) endMinute(d, end time.Time) int {
	ed := dayOf(end, c.loc())
	m := minuteOfDay(end, c.loc())
	switch {
	case ed.Equal(d):
		return m
	case ed.Equal(addDays(d, 1)) && m == 0:
		return 24 * 60
	}
	return -1
}

// fits reports whether [start, start+minutes) lies inside the opening hours
// of start's local day.
func (c Calendar) fits(start time.Time, minutes int) bool {
	d := dayOf(start, c.loc())
	h, ok := c.hoursOn(d)
	if !ok || minutes <= 0 {
		return false
	}
	s := minuteOfDay(start, c.loc())
	e := c.endMinute(d, start.Add(time.Duration(minutes)*time.Minute))
	return s >= h.Open && e > s && e <= h.Close
}

// slot returns a start on civil day d: at minute tod if the session fits
// there, otherwise at the day's opening time; false when neither fits.
func (c Calendar) slot(d time.Time, tod, minutes int) (time.Time, bool) {
	h, ok := c.hoursOn(d)
	if !ok {
		return time.Time{}, false
	}
	if t, ok := c.at(d, tod); ok && c.fits(t, minutes) {
		return t, true
	}
	if t, ok := c.at(d, h.Open); ok && c.fits(t, minutes) {
		return t, true
	}
	return time.Time{}, false
}

// nextSlot returns the first slot on or after civil day from on a day that is not busy.
func (c Calendar) nextSlot(from time.Time, tod, minutes int, busy map[time.Time]bool) (time.Time, bool) {
	for d := from; daysBetween(from, d) < searchDays; d = addDays(d, 1) {
		if busy[d] {
			continue
		}
		if t, ok := c.slot(d, tod, minutes); ok {
			return t, true
		}
	}
	return time.Time{}, false
}

// checkTimes reports why [start, end) is not a valid slot in the calendar.
func (c Calendar) checkTimes(ps *Problems, start, end time.Time) {
	if !end.After(start) {
		ps.Add("end", "must be after start")
	}
	d := dayOf(start, c.loc())
	h, ok := c.hoursOn(d)
	if !ok {
		ps.Add("start", "the clinic is closed on that day")
		return
	}
	if s := minuteOfDay(start, c.loc()); s < h.Open || s >= h.Close {
		ps.Addf("start", "is outside the clinic's opening hours that day (%s-%s)", hhmm(h.Open), hhmm(h.Close))
	}
	if end.After(start) {
		if e := c.endMinute(d, end); e < 0 || e > h.Close {
			ps.Addf("end", "is after the clinic closes that day (%s)", hhmm(h.Close))
		}
	}
}

// ---- dose rules ----------------------------------------------------------

// doseRules are a protocol's constraints on where a dose may fall.
type doseRules struct {
	spacing  Spacing
	minGap   int // effective minimum days between doses
	weekdays map[time.Weekday]bool
	minutes  int
	// integration, when set, makes next prefer a day whose integration
	// visits land on open days (a Saturday dose before a closed Sunday would
	// lose its next-day visit).
	integration *Integration
}

func newDoseRules(p Protocol) doseRules {
	r := doseRules{spacing: p.Spacing, minGap: max(p.Spacing.MinDays, 1), minutes: p.DoseMinutes, integration: p.Integration}
	if !p.Spacing.AllowConsecutive {
		r.minGap = max(r.minGap, 2)
	}
	if len(p.Spacing.Weekdays) > 0 {
		r.weekdays = map[time.Weekday]bool{}
		for _, w := range p.Spacing.Weekdays {
			if wd, ok := weekdayNames[strings.ToLower(w)]; ok {
				r.weekdays[wd] = true
			}
		}
	}
	return r
}

// dayAllowed reports whether a dose may fall on civil day d given the other
// dose days: the weekday filter, the ISO-week cap and the minimum gap.
func (r doseRules) dayAllowed(d time.Time, others []time.Time) bool {
	if r.weekdays != nil && !r.weekdays[d.Weekday()] {
		return false
	}
	y, w := d.ISOWeek()
	n := 0
	for _, o := range others {
		if g := daysBetween(o, d); g < r.minGap && g > -r.minGap {
			return false
		}
		if oy, ow := o.ISOWeek(); oy == y && ow == w {
			n++
		}
	}
	return r.spacing.PerWeekMax == 0 || n < r.spacing.PerWeekMax
}

// next returns the first dose slot on or after civil day from. When the
// protocol has integration visits, a slot up to two days later is preferred
// if the first one's visits would fall on closed days, as long as the gap to
// the previous dose stays within the protocol's maximum.
func (r doseRules) next(cal Calendar, from time.Time, others []time.Time, tod int) (time.Time, bool) {
	first, ok := r.scan(cal, from, others, tod, searchDays)
	if !ok || r.integration == nil || r.integrationFits(cal, first, tod) {
		return first, ok
	}
	var last time.Time
	for _, o := range others {
		if o.After(last) {
			last = o
		}
	}
	day := dayOf(first, cal.loc())
	for d := addDays(day, 1); daysBetween(day, d) <= 2; d = addDays(d, 1) {
		if r.spacing.MaxDays > 0 && !last.IsZero() && daysBetween(last, d) > r.spacing.MaxDays {
			break
		}
		if t, ok := r.scan(cal, d, others, tod, 1); ok && r.integrationFits(cal, t, tod) {
			return t, true
		}
	}
	return first, true
}

// scan returns the first dose slot in the days civil days from from.
func (r doseRules) scan(cal Calendar, from time.Time, others []time.Time, tod, days int) (time.Time, bool) {
	for d := from; daysBetween(from, d) < days; d = addDays(d, 1) {
		if !r.dayAllowed(d, others) {
			continue
		}
		if t, ok := cal.slot(d, tod, r.minutes); ok {
			return t, true
		}
	}
	return time.Time{}, false
}

// integrationFits reports whether every integration visit after a dose at t
// has a slot on its own day.
func (r doseRules) integrationFits(cal Calendar, t time.Time, tod int) bool {
	day := dayOf(t, cal.loc())
	for _, off := range r.integration.OffsetDays {
		if _, ok := cal.slot(addDays(day, off), tod, r.integration.Minutes); !ok {
			return false
		}
	}
	return true
}

// integrationSlots places the integration visits after a dose on civil day
// doseDay: each at its offset, moved forward to the next day with a slot but
// kept before the next dose (nextDose zero = no next dose); when no day is left
// before the next dose, the visit moves back towards the dose instead, and is
// left out when there is no day at all.
func integrationSlots(cal Calendar, in Integration, doseDay, nextDose time.Time, tod int) []time.Time {
	var out []time.Time
	prev := doseDay
	for _, off := range in.OffsetDays {
		target := addDays(doseDay, off)
		if !target.After(prev) {
			target = addDays(prev, 1)
		}
		limit := addDays(target, 31)
		if !nextDose.IsZero() {
			limit = nextDose
		}
		var t time.Time
		found := false
		for d := target; d.Before(limit); d = addDays(d, 1) {
			if t, found = cal.slot(d, tod, in.Minutes); found {
				break
			}
		}
		if !found && !nextDose.IsZero() {
			start := target
			if !start.Before(nextDose) {
				start = nextDose
			}
			for d := addDays(start, -1); d.After(prev); d = addDays(d, -1) {
				if t, found = cal.slot(d, tod, in.Minutes); found {
					break
				}
			}
		}
		if !found {
			continue
		}
		out = append(out, t)
		prev = dayOf(t, cal.loc())
	}
	return out
}

// reassessmentSlot places the reassessment inside [last dose + minDays, + maxDays]
// on a day without another session of the plan, or at the first such day after
// the window when the window has none.
func reassessmentSlot(cal Calendar, r Reassessment, lastDay time.Time, tod int, busy map[time.Time]bool) (time.Time, bool) {
	for d := addDays(lastDay, r.MinDays); daysBetween(lastDay, d) <= r.MaxDays; d = addDays(d, 1) {
		if busy[d] {
			continue
		}
		if t, ok := cal.slot(d, tod, r.Minutes); ok {
			return t, true
		}
	}
	return cal.nextSlot(addDays(lastDay, r.MaxDays+1), tod, r.Minutes, busy)
}

func needsIntegration(in *Integration, dose int, last bool) bool {
	return in != nil && (last || (in.AfterEvery > 0 && dose%in.AfterEvery == 0))
}

func sessionMinutes(p Protocol, k SessionKind) int {
	switch k {
	case SessionPreparation:
		if p.Preparation != nil {
			return p.Preparation.Minutes
		}
	case SessionIntegration:
		if p.Integration != nil {
			return p.Integration.Minutes
		}
	case SessionReassessment:
		if p.Reassessment != nil {
			return p.Reassessment.Minutes
		}
	}
	return p.DoseMinutes
}

var kindOrder = map[SessionKind]int{
	SessionPreparation: 0, SessionDosing: 1, SessionBooster: 1, SessionMaintenance: 1,
	SessionIntegration: 2, SessionReassessment: 3,
}

// sessionTime is when a session happens: its start, or its window's start.
func sessionTime(s Session) time.Time {
	if s.HasSlot() || s.Window == nil {
		return s.Start
	}
	return s.Window.Start
}

func compareSessions(a, b Session) int {
	if c := sessionTime(a).Compare(sessionTime(b)); c != 0 {
		return c
	}
	if c := cmp.Compare(kindOrder[a.Kind], kindOrder[b.Kind]); c != 0 {
		return c
	}
	return cmp.Compare(a.Dose, b.Dose)
}

// ---- induction -----------------------------------------------------------

// Schedule generates an induction plan's sessions, all proposed with slots:
// the preparation visit (if the protocol has one) at req.Start and the doses
// after it, otherwise dose 1 at req.Start; integration visits after the doses;
// the reassessment after the last dose. Every session keeps req.Start's local
// time of day, or takes the day's opening time when the clinic is closed at
// that hour. Rules that closures make impossible to honour (spacing.maxDays,
// spacing.maxSpanDays) are returned as issues; the sessions still go to the
// earliest valid day. Sessions are returned in time order.
func Schedule(p Protocol, req ScheduleRequest, cal Calendar, newID func() string) ([]Session, []ScheduleIssue, error) {
	p, err := p.ForIndication(req.Indication)
	if err != nil {
		return nil, nil, fmt.Errorf("schedule: %w", err)
	}
	var ps Problems
	if p.Kind != PlanInduction {
		ps.Addf("protocolId", "is a %s protocol, not an induction", p.Kind)
		return nil, nil, ps.Err("invalid schedule request")
	}
	n := req.Doses
	switch {
	case n == 0:
		n = p.Doses.Default
	case n < p.Doses.Min || n > p.Doses.Max:
		ps.Addf("doses", "must be %d to %d for protocol %s", p.Doses.Min, p.Doses.Max, p.ID)
	}
	if req.Route != "" && req.Route != p.Route && !slices.Contains(p.Routes, req.Route) {
		ps.Addf("route", "must be %s for protocol %s", joinValues(append([]Route{p.Route}, p.Routes...)), p.ID)
	}
	loc := cal.loc()
	rules := newDoseRules(p)
	start := req.Start.In(loc)
	first := SessionDosing
	if p.Preparation != nil {
		first = SessionPreparation
	}
	if req.Start.IsZero() {
		ps.Add("start", "is required")
	} else {
		startDay := dayOf(start, loc)
		if _, open := cal.hoursOn(startDay); !open {
			ps.Add("start", "the clinic is closed on that day")
		} else if !cal.fits(start, sessionMinutes(p, first)) {
			ps.Addf("start", "the first session (%d minutes) does not fit inside that day's opening hours", sessionMinutes(p, first))
		}
		if first == SessionDosing && rules.weekdays != nil && !rules.weekdays[startDay.Weekday()] {
			ps.Addf("start", "must fall on one of the protocol's dosing weekdays (%s)", strings.Join(p.Spacing.Weekdays, ", "))
		}
	}
	if newID == nil {
		return nil, nil, Errorf(KindInternal, "schedule: no id generator")
	}
	if len(ps) > 0 {
		return nil, nil, ps.Err("invalid schedule request")
	}

	tod := minuteOfDay(start, loc)
	var out []Session
	add := func(k SessionKind, dose int, t time.Time) {
		out = append(out, Session{
			PlanID: req.PlanID, Kind: k, Status: StatusProposed, Dose: dose,
			Start: t, End: t.Add(time.Duration(sessionMinutes(p, k)) * time.Minute),
		})
	}
	var doseTimes []time.Time
	var doseDays []time.Time
	if p.Preparation != nil {
		add(SessionPreparation, 0, start)
		t, ok := rules.next(cal, addDays(dayOf(start, loc), p.Preparation.DaysBefore), nil, tod)
		if !ok {
			return nil, nil, noDayError("dose 1")
		}
		doseTimes, doseDays = append(doseTimes, t), append(doseDays, dayOf(t, loc))
	} else {
		doseTimes, doseDays = append(doseTimes, start), append(doseDays, dayOf(start, loc))
	}
	for k := 2; k <= n; k++ {
		prev := doseDays[len(doseDays)-1]
		t, ok := rules.next(cal, addDays(prev, rules.minGap), doseDays, tod)
		if !ok {
			return nil, nil, noDayError(fmt.Sprintf("dose %d", k))
		}
		doseTimes, doseDays = append(doseTimes, t), append(doseDays, dayOf(t, loc))
	}
	for k, t := range doseTimes {
		add(SessionDosing, k+1, t)
	}
	if in := p.Integration; in != nil {
		for k, d := range doseDays {
			if !needsIntegration(in, k+1, k == n-1) {
				continue
			}
			var next time.Time
			if k+1 < n {
				next = doseDays[k+1]
			}
			for _, t := range integrationSlots(cal, *in, d, next, tod) {
				add(SessionIntegration, k+1, t)
			}
		}
	}
	if r := p.Reassessment; r != nil {
		busy := map[time.Time]bool{}
		for _, s := range out {
			busy[dayOf(s.Start, loc)] = true
		}
		if t, ok := reassessmentSlot(cal, *r, doseDays[n-1], tod, busy); ok {
			add(SessionReassessment, 0, t)
		}
	}
	slices.SortStableFunc(out, compareSessions)
	for i := range out {
		out[i].ID = newID()
	}
	return out, inductionIssues(p, out, loc), nil
}

func noDayError(what string) error {
	return Invalid("cannot schedule", FieldError{
		Field:  "start",
		Reason: fmt.Sprintf("the clinic calendar has no day for %s within %d days", what, searchDays),
	})
}

// liveDoses returns the indexes of a plan's live dosing sessions, by start then dose number.
func liveDoses(prog *Program, planID string) []int {
	var idx []int
	for i, s := range prog.Sessions {
		if s.PlanID == planID && s.Kind == SessionDosing && live(s) {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		if c := prog.Sessions[a].Start.Compare(prog.Sessions[b].Start); c != 0 {
			return c
		}
		return cmp.Compare(prog.Sessions[a].Dose, prog.Sessions[b].Dose)
	})
	return idx
}

// inductionIssues lists the protocol rules an induction plan's sessions break.
func inductionIssues(p Protocol, sessions []Session, loc *time.Location) []ScheduleIssue {
	prog := &Program{Sessions: sessions}
	planID := ""
	if len(sessions) > 0 {
		planID = sessions[0].PlanID
	}
	doses := liveDoses(prog, planID)
	var out []ScheduleIssue
	issue := func(code string, s Session, format string, args ...any) {
		out = append(out, ScheduleIssue{Code: code, Message: fmt.Sprintf(format, args...), Session: s.ID})
	}
	rules := newDoseRules(p)
	perWeek := map[[2]int]int{}
	var days []time.Time
	for k, i := range doses {
		s := sessions[i]
		d := dayOf(s.Start, loc)
		days = append(days, d)
		if rules.weekdays != nil && !rules.weekdays[d.Weekday()] {
			issue(IssueWeekdayNotAllowed, s, "dose %d falls on a weekday the protocol does not dose on (%s)", s.Dose, strings.Join(p.Spacing.Weekdays, ", "))
		}
		y, w := d.ISOWeek()
		perWeek[[2]int{y, w}]++
		if cap := p.Spacing.PerWeekMax; cap > 0 && perWeek[[2]int{y, w}] == cap+1 {
			issue(IssuePerWeekExceeded, s, "dose %d makes more than %d doses in one week", s.Dose, cap)
		}
		if k == 0 {
			continue
		}
		prev := sessions[doses[k-1]]
		gap := daysBetween(days[k-1], d)
		switch {
		case gap < rules.minGap:
			issue(IssueSpacingViolated, s, "dose %d is %d day(s) after dose %d; the protocol needs at least %d", s.Dose, gap, prev.Dose, rules.minGap)
		case p.Spacing.MaxDays > 0 && gap > p.Spacing.MaxDays:
			issue(IssueSpacingExceeded, s, "dose %d is %d days after dose %d; the protocol allows at most %d", s.Dose, gap, prev.Dose, p.Spacing.MaxDays)
		}
	}
	if len(doses) < p.Doses.Min {
		var s Session
		if len(doses) > 0 {
			s = sessions[doses[len(doses)-1]]
		}
		issue(IssueDosesBelowMinimum, s, "the plan has %d live doses; the protocol needs at least %d", len(doses), p.Doses.Min)
	}
	if len(doses) == 0 {
		return out
	}
	if span := daysBetween(days[0], days[len(days)-1]); p.Spacing.MaxSpanDays > 0 && span > p.Spacing.MaxSpanDays {
		issue(IssueWindowExceeded, sessions[doses[len(doses)-1]], "the doses span %d days; the protocol's window is %d days", span, p.Spacing.MaxSpanDays)
	}
	if in := p.Integration; in != nil {
		count := map[int]int{}
		for _, s := range sessions {
			if s.PlanID == planID && s.Kind == SessionIntegration && live(s) {
				count[s.Dose]++
			}
		}
		for k, i := range doses {
			s := sessions[i]
			if needsIntegration(in, s.Dose, k == len(doses)-1) && count[s.Dose] < len(in.OffsetDays) {
				issue(IssueIntegrationMissing, s, "dose %d has %d of %d integration visits", s.Dose, count[s.Dose], len(in.OffsetDays))
			}
		}
	}
	if r := p.Reassessment; r != nil {
		last := days[len(days)-1]
		for _, s := range sessions {
			if s.PlanID != planID || s.Kind != SessionReassessment || !live(s) {
				continue
			}
			if g := daysBetween(last, dayOf(s.Start, loc)); g < r.MinDays || g > r.MaxDays {
				issue(IssueReassessmentOutside, s, "the reassessment is %d days after the last dose; the protocol asks for %d to %d", g, r.MinDays, r.MaxDays)
			}
		}
	}
	return out
}

// ScheduleIssues recomputes the schedule issues of every active induction
// plan of the programme (with the programme's indication variant applied).
func ScheduleIssues(prog *Program, lookup func(id string) (Protocol, bool), cal Calendar) []ScheduleIssue {
	out := []ScheduleIssue{}
	if lookup == nil {
		return out
	}
	for _, pl := range prog.Plans {
		if pl.Kind != PlanInduction || pl.Status == PlanRevoked {
			continue
		}
		p, ok := lookup(pl.ProtocolID)
		if !ok {
			continue
		}
		if q, err := p.ForIndication(prog.Indication); err == nil {
			p = q
		}
		out = append(out, inductionIssues(p, prog.PlanSessions(pl.ID), cal.loc())...)
	}
	return out
}

// ---- booster and maintenance -----------------------------------------------

// ScheduleFollowOn proposes a booster or maintenance plan's sessions.
//
// Boosters are window-only proposals (status proposed, Window set, no slot):
// the window from windowStartMonths to windowEndMonths after req.After is split
// into Count consecutive sub-windows, one booster each. A booster protocol with
// only a relapse rule (booster-on-relapse) gets no sessions: ProposeRelapseBooster
// adds them when the rule fires. Maintenance sessions get slots at the cadence
// (intervalDays, or intervalMonths on the same day of the month), each moved to
// the next open day when the clinic is closed, keeping the local time of day.
func ScheduleFollowOn(p Protocol, req FollowOnRequest, cal Calendar, newID func() string) ([]Session, []ScheduleIssue, error) {
	var ps Problems
	if p.Kind == PlanInduction {
		ps.Add("protocolId", "is an induction protocol: start a new programme instead")
		return nil, nil, ps.Err("invalid plan")
	}
	if req.After.IsZero() {
		ps.Add("after", "is required (the induction's last dose)")
	}
	if newID == nil {
		return nil, nil, Errorf(KindInternal, "schedule follow-on: no id generator")
	}
	loc := cal.loc()
	after := req.After.In(loc)
	afterDay := dayOf(after, loc)
	count := func(r IntRange) int {
		switch {
		case req.Count == 0:
			return r.Default
		case req.Count < r.Min || req.Count > r.Max:
			ps.Addf("count", "must be %d to %d for protocol %s", r.Min, r.Max, p.ID)
		}
		return req.Count
	}
	localMidnight := func(d time.Time) time.Time {
		return time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, loc)
	}
	var out []Session
	switch p.Kind {
	case PlanBooster:
		if p.Booster == nil {
			if len(ps) > 0 {
				return nil, nil, ps.Err("invalid plan")
			}
			return nil, nil, nil
		}
		n := count(p.Booster.Count)
		if !req.Start.IsZero() {
			ps.Add("start", "is only for maintenance plans: boosters are proposed as windows")
		}
		if len(ps) > 0 {
			return nil, nil, ps.Err("invalid plan")
		}
		ws := addMonths(afterDay, p.Booster.WindowStartMonths)
		we := addMonths(afterDay, p.Booster.WindowEndMonths)
		total := daysBetween(ws, we)
		for i := range n {
			a := addDays(ws, total*i/n)
			b := addDays(ws, total*(i+1)/n)
			out = append(out, Session{
				ID: newID(), PlanID: req.PlanID, Kind: SessionBooster, Status: StatusProposed, Dose: i + 1,
				Window: &Period{Start: localMidnight(a), End: localMidnight(b)},
			})
		}
		return out, nil, nil
	case PlanMaintenance:
		m := p.Maintenance
		if m == nil {
			return nil, nil, Errorf(KindInvalid, "protocol %s has no maintenance cadence", p.ID)
		}
		n := count(m.Count)
		// The i-th session's nominal day counts whole intervals from an
		// origin, so that monthly sessions keep the origin's day of the month.
		nominal := func(origin time.Time, k int) time.Time {
			if m.IntervalMonths > 0 {
				return addMonths(origin, k*m.IntervalMonths)
			}
			return addDays(origin, k*max(m.IntervalDays, 1))
		}
		tod := minuteOfDay(after, loc)
		origin, skip := afterDay, 1 // session i is at origin + (i+skip) intervals
		var first time.Time
		if !req.Start.IsZero() {
			start := req.Start.In(loc)
			cal.checkTimes(&ps, start, start.Add(time.Duration(p.DoseMinutes)*time.Minute))
			if !start.After(after) {
				ps.Add("start", "must be after the induction's last dose")
			}
			first, tod, origin, skip = start, minuteOfDay(start, loc), dayOf(start, loc), 0
		}
		if len(ps) > 0 {
			return nil, nil, ps.Err("invalid plan")
		}
		prev := afterDay
		for i := range n {
			t := first
			if i > 0 || t.IsZero() {
				from := nominal(origin, i+skip)
				if !from.After(prev) {
					from = addDays(prev, 1)
				}
				var ok bool
				if t, ok = cal.nextSlot(from, tod, p.DoseMinutes, nil); !ok {
					return nil, nil, noDayError(fmt.Sprintf("maintenance session %d", i+1))
				}
			}
			prev = dayOf(t, loc)
			out = append(out, Session{
				ID: newID(), PlanID: req.PlanID, Kind: SessionMaintenance, Status: StatusProposed, Dose: i + 1,
				Start: t, End: t.Add(time.Duration(p.DoseMinutes) * time.Minute),
			})
		}
		return out, nil, nil
	}
	return nil, nil, Errorf(KindInvalid, "protocol %s has unknown kind %q", p.ID, p.Kind)
}

// ProposeRelapseBooster adds one window-only booster proposal to a plan: the
// window is the next 14 days from now. It does nothing when the plan already
// has a pending booster, or when a booster of the plan was proposed or given
// after the latest PHQ-9 (the rise has been answered; a newer PHQ-9 is needed).
func ProposeRelapseBooster(prog *Program, planID string, now time.Time, cal Calendar, newID func() string) {
	pl, ok := prog.Plan(planID)
	if !ok || pl.Status == PlanRevoked || prog.Status == ProgramRevoked || newID == nil {
		return
	}
	var latest time.Time
	if phq := phq9Series(prog.Measurements); len(phq) > 0 {
		latest = phq[len(phq)-1].Effective
	}
	dose := 0
	for _, s := range prog.Sessions {
		if s.PlanID != planID || s.Kind != SessionBooster {
			continue
		}
		dose = max(dose, s.Dose)
		if !s.Final() {
			return
		}
		if !latest.IsZero() && !sessionTime(s).Before(latest) {
			return
		}
	}
	start := now.In(cal.loc())
	prog.Sessions = append(prog.Sessions, Session{
		ID: newID(), PlanID: planID, Kind: SessionBooster, Status: StatusProposed, Dose: dose + 1,
		Window: &Period{Start: start, End: start.AddDate(0, 0, relapseWindowDays)},
	})
	if pl.Status == PlanCompleted {
		pl.Status = PlanActive
	}
	if prog.Status == ProgramCompleted {
		prog.Status = ProgramActive
	}
}

// ---- changes -------------------------------------------------------------

// transitions lists the status changes a session may make.
var transitions = map[SessionStatus][]SessionStatus{
	StatusProposed: {StatusBooked, StatusArrived, StatusFulfilled, StatusCancelled},
	StatusBooked:   {StatusArrived, StatusFulfilled, StatusCancelled, StatusNoShow},
	StatusArrived:  {StatusFulfilled, StatusCancelled},
}

// pending reports whether the scheduler may still move a session.
func pending(s Session) bool {
	return s.HasSlot() && (s.Status == StatusProposed || s.Status == StatusBooked)
}

// ApplySessionChange validates and applies a status change and/or a move of
// one session, then updates the rest of the schedule per the protocol:
//
//   - a cancelled or missed dose is replaced at the next valid slot (a new
//     proposed session with Replaces set); later pending doses that no longer
//     keep the spacing shift, the cancelled dose's pending integration visits
//     are cancelled and new ones planned after the replacement, and the
//     reassessment moves after the last dose;
//   - a moved dose re-plans the later sessions the same way;
//   - a cancelled or missed maintenance session is replaced at the next open day.
//
// Sessions the scheduler moves go back to proposed (their booking was for the
// old time). Rules the schedule can no longer meet are recorded on prog.Issues,
// which is recomputed. Invalid transitions are KindConflict errors; bad times
// are KindInvalid naming "start"/"end". A plan whose sessions are all final is
// completed, and a programme whose plans are all completed is completed.
func ApplySessionChange(prog *Program, sessionID string, ch SessionChange, lookup func(id string) (Protocol, bool), cal Calendar, newID func() string) error {
	idx := slices.IndexFunc(prog.Sessions, func(s Session) bool { return s.ID == sessionID })
	if idx < 0 {
		return NotFound("session", sessionID)
	}
	s := prog.Sessions[idx]
	plan, ok := prog.Plan(s.PlanID)
	if !ok {
		return Errorf(KindInternal, "session %s belongs to no plan of programme %s", s.ID, prog.ID)
	}
	if prog.Status == ProgramRevoked {
		return Errorf(KindConflict, "programme %s is revoked", prog.ID)
	}
	if plan.Status == PlanRevoked {
		return Errorf(KindConflict, "plan %s is revoked", plan.ID)
	}
	to := ch.Status
	if to == "" {
		to = s.Status
	}
	moving := !ch.Start.IsZero() || !ch.End.IsZero()
	if to != s.Status && !slices.Contains(transitions[s.Status], to) {
		return Errorf(KindConflict, "session %s cannot go from %s to %s", s.ID, s.Status, to)
	}
	if moving && s.Final() {
		return Errorf(KindConflict, "session %s is %s and cannot move", s.ID, s.Status)
	}
	var ps Problems
	if moving && (to == StatusCancelled || to == StatusNoShow) {
		ps.Add("start", "a cancelled or missed session keeps its time: change the status without start or end")
		return ps.Err("invalid session change")
	}
	if !s.HasSlot() && to != StatusCancelled && to != StatusProposed {
		if ch.Start.IsZero() {
			ps.Add("start", "is required to book a proposal that has only a window")
		}
		if ch.End.IsZero() {
			ps.Add("end", "is required to book a proposal that has only a window")
		}
		if len(ps) > 0 {
			return ps.Err("invalid session change")
		}
	}
	loc := cal.loc()
	start, end := s.Start, s.End
	if moving {
		if !ch.Start.IsZero() {
			start = ch.Start.In(loc)
		}
		if !ch.End.IsZero() {
			end = ch.End.In(loc)
		} else {
			end = start.Add(s.End.Sub(s.Start))
		}
		cal.checkTimes(&ps, start, end)
		if len(ps) > 0 {
			return ps.Err("invalid session change")
		}
	}
	if newID == nil {
		return Errorf(KindInternal, "apply session change: no id generator")
	}
	statusChanged := to != s.Status
	prog.Sessions[idx].Status = to
	prog.Sessions[idx].Start, prog.Sessions[idx].End = start, end

	var p Protocol
	hasProto := false
	if lookup != nil {
		p, hasProto = lookup(plan.ProtocolID)
	}
	if hasProto && plan.Kind == PlanInduction {
		if q, err := p.ForIndication(prog.Indication); err == nil {
			p = q
		}
	}
	missed := statusChanged && (to == StatusCancelled || to == StatusNoShow) && s.HasSlot()
	if hasProto {
		switch {
		case plan.Kind == PlanInduction && s.Kind == SessionDosing && missed:
			replan(prog, plan.ID, p, cal, newID, idx, true)
		case plan.Kind == PlanInduction && s.Kind == SessionDosing && moving:
			replan(prog, plan.ID, p, cal, newID, idx, false)
		case plan.Kind == PlanMaintenance && s.Kind == SessionMaintenance && missed:
			replaceMaintenance(prog, idx, p, cal, newID)
		}
	}
	sortSessions(prog)
	prog.Issues = ScheduleIssues(prog, lookup, cal)
	updateStatuses(prog)
	return nil
}

// replan re-plans an induction plan after the dose at index changed: with
// replace, the dose was cancelled or missed and gets a replacement; otherwise
// it moved. Later pending doses shift when they no longer keep the spacing,
// integration visits follow their doses and the reassessment follows the last dose.
func replan(prog *Program, planID string, p Protocol, cal Calendar, newID func() string, index int, replace bool) {
	loc := cal.loc()
	rules := newDoseRules(p)
	changed := map[string]bool{} // doses whose slot is new or moved
	created := map[string]bool{} // replacement doses
	anchor := prog.Sessions[index].ID
	day := func(i int) time.Time { return dayOf(prog.Sessions[i].Start, loc) }
	tod := planTOD(prog, planID, loc)

	if replace {
		c := prog.Sessions[index]
		for i := range prog.Sessions {
			si := &prog.Sessions[i]
			if si.PlanID == planID && si.Kind == SessionIntegration && si.Dose == c.Dose && pending(*si) {
				si.Status = StatusCancelled
			}
		}
		cDay := dayOf(c.Start, loc)
		from := addDays(cDay, 1)
		var settled []time.Time
		for _, i := range liveDoses(prog, planID) {
			d := prog.Sessions[i]
			switch {
			case d.Dose < c.Dose:
				settled = append(settled, day(i))
				if f := addDays(day(i), rules.minGap); f.After(from) {
					from = f
				}
			case !pending(d):
				settled = append(settled, day(i))
			}
		}
		t, ok := rules.next(cal, from, settled, tod)
		if !ok {
			return // the recomputed issues report the missing dose
		}
		ns := Session{
			ID: newID(), PlanID: planID, Kind: SessionDosing, Status: StatusProposed, Dose: c.Dose,
			Start: t, End: t.Add(time.Duration(p.DoseMinutes) * time.Minute), Replaces: c.ID,
		}
		prog.Sessions = append(prog.Sessions, ns)
		anchor = ns.ID
		changed[ns.ID], created[ns.ID] = true, true
	} else {
		changed[anchor] = true
	}

	// Later pending doses (by dose number) shift when they no longer keep the
	// spacing with the dose before them or with the doses that cannot move.
	byNumber := liveDoses(prog, planID)
	slices.SortStableFunc(byNumber, func(a, b int) int { return cmp.Compare(prog.Sessions[a].Dose, prog.Sessions[b].Dose) })
	if pos := slices.IndexFunc(byNumber, func(i int) bool { return prog.Sessions[i].ID == anchor }); pos >= 0 {
		var settled []time.Time
		for k, i := range byNumber {
			if k <= pos || !pending(prog.Sessions[i]) {
				settled = append(settled, day(i))
			}
		}
		prev := day(byNumber[pos])
		for _, i := range byNumber[pos+1:] {
			d := &prog.Sessions[i]
			if !pending(*d) {
				prev = day(i)
				continue
			}
			dd := day(i)
			gap := daysBetween(prev, dd)
			keep := gap >= rules.minGap && (p.Spacing.MaxDays == 0 || gap <= p.Spacing.MaxDays) &&
				rules.dayAllowed(dd, settled) && cal.fits(d.Start, int(d.End.Sub(d.Start).Minutes()))
			if !keep {
				if t, ok := rules.next(cal, addDays(prev, rules.minGap), settled, tod); ok {
					d.Start, d.End = t, t.Add(time.Duration(p.DoseMinutes)*time.Minute)
					if d.Status == StatusBooked {
						d.Status = StatusProposed
					}
					changed[d.ID] = true
				}
			}
			settled = append(settled, day(i))
			prev = day(i)
		}
	}

	doses := liveDoses(prog, planID)
	if in := p.Integration; in != nil {
		for k, i := range doses {
			d := prog.Sessions[i]
			dd := day(i)
			var next time.Time
			if k+1 < len(doses) {
				next = day(doses[k+1])
			}
			var visits []int
			done := 0
			invalid := false
			for j, v := range prog.Sessions {
				if v.PlanID != planID || v.Kind != SessionIntegration || v.Dose != d.Dose || !live(v) {
					continue
				}
				if !pending(v) {
					done++
					continue
				}
				visits = append(visits, j)
				vd := dayOf(v.Start, loc)
				if !vd.After(dd) || (!next.IsZero() && !vd.Before(next)) {
					invalid = true
				}
			}
			if !changed[d.ID] && !invalid {
				continue
			}
			slices.SortStableFunc(visits, func(a, b int) int { return prog.Sessions[a].Start.Compare(prog.Sessions[b].Start) })
			slots := integrationSlots(cal, *in, dd, next, tod)
			if done < len(slots) {
				slots = slots[done:]
			} else {
				slots = nil
			}
			for j, vi := range visits {
				v := &prog.Sessions[vi]
				if j >= len(slots) {
					v.Status = StatusCancelled
					continue
				}
				if !v.Start.Equal(slots[j]) {
					v.Start, v.End = slots[j], slots[j].Add(time.Duration(in.Minutes)*time.Minute)
					if v.Status == StatusBooked {
						v.Status = StatusProposed
					}
				}
			}
			if created[d.ID] && needsIntegration(in, d.Dose, k == len(doses)-1) {
				for j := len(visits); j < len(slots); j++ {
					prog.Sessions = append(prog.Sessions, Session{
						ID: newID(), PlanID: planID, Kind: SessionIntegration, Status: StatusProposed, Dose: d.Dose,
						Start: slots[j], End: slots[j].Add(time.Duration(in.Minutes) * time.Minute),
					})
				}
			}
		}
	}

	if r := p.Reassessment; r != nil && len(doses) > 0 {
		lastDay := day(doses[len(doses)-1])
		for ri := range prog.Sessions {
			rs := prog.Sessions[ri]
			if rs.PlanID != planID || rs.Kind != SessionReassessment || !pending(rs) {
				continue
			}
			busy := map[time.Time]bool{}
			for _, o := range prog.Sessions {
				if o.PlanID == planID && o.ID != rs.ID && live(o) {
					busy[dayOf(o.Start, loc)] = true
				}
			}
			rd := dayOf(rs.Start, loc)
			if g := daysBetween(lastDay, rd); g >= r.MinDays && g <= r.MaxDays && !busy[rd] {
				continue
			}
			if t, ok := reassessmentSlot(cal, *r, lastDay, tod, busy); ok {
				rp := &prog.Sessions[ri]
				rp.Start, rp.End = t, t.Add(time.Duration(r.Minutes)*time.Minute)
				if rp.Status == StatusBooked {
					rp.Status = StatusProposed
				}
			}
		}
	}
}

// sortSessions orders a programme's sessions by plan (in plan order) and by
// time within a plan, so that PlanSessions returns them in time order.
func sortSessions(prog *Program) {
	order := map[string]int{}
	for i, pl := range prog.Plans {
		order[pl.ID] = i
	}
	slices.SortStableFunc(prog.Sessions, func(a, b Session) int {
		if c := cmp.Compare(order[a.PlanID], order[b.PlanID]); c != 0 {
			return c
		}
		return compareSessions(a, b)
	})
}

// planTOD is the local time of day a plan's sessions keep: the programme's
// requested start for its induction, otherwise the plan's earliest session.
func planTOD(prog *Program, planID string, loc *time.Location) int {
	if pl, ok := prog.Plan(planID); ok && pl.Kind == PlanInduction && !prog.Start.IsZero() {
		return minuteOfDay(prog.Start, loc)
	}
	var first time.Time
	for _, s := range prog.Sessions {
		if s.PlanID == planID && s.HasSlot() && (first.IsZero() || s.Start.Before(first)) {
			first = s.Start
		}
	}
	return minuteOfDay(first, loc)
}

// replaceMaintenance replaces a cancelled or missed maintenance session at the
// next open day that has no other session of its plan.
func replaceMaintenance(prog *Program, index int, p Protocol, cal Calendar, newID func() string) {
	loc := cal.loc()
	c := prog.Sessions[index]
	busy := map[time.Time]bool{}
	for _, o := range prog.Sessions {
		if o.PlanID == c.PlanID && live(o) {
			busy[dayOf(o.Start, loc)] = true
		}
	}
	t, ok := cal.nextSlot(addDays(dayOf(c.Start, loc), 1), planTOD(prog, c.PlanID, loc), p.DoseMinutes, busy)
	if !ok {
		return
	}
	prog.Sessions = append(prog.Sessions, Session{
		ID: newID(), PlanID: c.PlanID, Kind: SessionMaintenance, Status: StatusProposed, Dose: c.Dose,
		Start: t, End: t.Add(time.Duration(p.DoseMinutes) * time.Minute), Replaces: c.ID,
	})
}

// updateStatuses completes plans whose sessions are all final and the
// programme when all its plans are completed, and reopens them when a
// non-final session appears again.
func updateStatuses(prog *Program) {
	allDone := len(prog.Plans) > 0
	for i := range prog.Plans {
		pl := &prog.Plans[i]
		if pl.Status == PlanRevoked {
			continue
		}
		ss := prog.PlanSessions(pl.ID)
		final := len(ss) > 0
		for _, s := range ss {
			if !s.Final() {
				final = false
				break
			}
		}
		switch {
		case final:
			pl.Status = PlanCompleted
		case pl.Status == PlanCompleted:
			pl.Status = PlanActive
		}
		if pl.Status != PlanCompleted {
			allDone = false
		}
	}
	switch {
	case prog.Status == ProgramRevoked:
	case allDone:
		prog.Status = ProgramCompleted
	case prog.Status == ProgramCompleted:
		prog.Status = ProgramActive
	}
}
