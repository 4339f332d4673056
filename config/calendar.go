package config

import (
	"fmt"
	"time"

	"github.com/kapfhir/kapfhir/treatment"
)

// Calendar builds the clinic calendar from a validated configuration.
func (c Config) Calendar() (treatment.Calendar, error) {
	loc, err := time.LoadLocation(c.Clinic.Timezone)
	if err != nil {
		return treatment.Calendar{}, fmt.Errorf("config: clinic.timezone: %w", err)
	}
	cal := treatment.Calendar{Location: loc, Open: map[time.Weekday]treatment.Hours{}, Closed: map[string]bool{}}
	for day, spec := range c.Clinic.Hours {
		wd, ok := weekdays[day]
		if !ok {
			return cal, fmt.Errorf("config: clinic.hours.%s: unknown weekday", day)
		}
		h, err := parseHours(spec)
		if err != nil {
			return cal, fmt.Errorf("config: clinic.hours.%s: %w", day, err)
		}
		cal.Open[wd] = treatment.Hours{Open: h.open, Close: h.close}
	}
	for _, d := range c.Clinic.Closed {
		cal.Closed[d] = true
	}
	return cal, nil
}
