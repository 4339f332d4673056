package treatment

import "time"

// Hours are a day's opening hours in minutes after local midnight, [Open, Close).
type Hours struct {
	Open  int `json:"open"`
	Close int `json:"close"`
}

// Calendar is the clinic's calendar: its time zone, the hours of each open
// weekday and the dates it is closed. It comes from configuration.
type Calendar struct {
	Location *time.Location
	// Open maps each open weekday to its hours; a weekday not in the map is closed.
	Open map[time.Weekday]Hours
	// Closed lists closed dates as "YYYY-MM-DD" in clinic-local time.
	Closed map[string]bool
}

// DefaultCalendar is open Monday to Friday 08:00-18:00 and Saturday 09:00-13:00.
func DefaultCalendar(loc *time.Location) Calendar {
	wk := Hours{Open: 8 * 60, Close: 18 * 60}
	return Calendar{
		Location: loc,
		Open: map[time.Weekday]Hours{
			time.Monday: wk, time.Tuesday: wk, time.Wednesday: wk, time.Thursday: wk, time.Friday: wk,
			time.Saturday: {Open: 9 * 60, Close: 13 * 60},
		},
		Closed: map[string]bool{},
	}
}

// In returns a copy of the calendar in another location (a programme's time zone):
// the same wall-clock hours and closed dates, read in loc.
func (c Calendar) In(loc *time.Location) Calendar {
	c.Location = loc
	return c
}

// IsOpenDay reports whether the clinic is open on the local date of t.
func (c Calendar) IsOpenDay(t time.Time) bool {
	t = t.In(c.Location)
	if c.Closed[t.Format(time.DateOnly)] {
		return false
	}
	_, ok := c.Open[t.Weekday()]
	return ok
}
