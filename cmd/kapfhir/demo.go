package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/config"
	"github.com/kapfhir/kapfhir/treatment"
)

// demoSystem is the identifier system of the demo's synthetic patients.
const demoSystem = "https://kapfhir.org/fhir/sid/demo-mrn"

// demo enrols synthetic patients (no real PHI) so that every protocol in the
// catalogue is used: one patient per induction protocol, with its first
// follow-on plan, then one more patient for each booster or maintenance plan
// not used yet, added after an induction that lists it as a follow-on. It
// prints each schedule and the URLs to pull it as FHIR.
func demo(ctx context.Context, cfg config.Config, log *slog.Logger, w io.Writer) error {
	svc, st, err := newService(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	base := "http://" + cfg.Listen + "/fhir"
	if cfg.BaseURL != "" {
		base = strings.TrimSuffix(cfg.BaseURL, "/") + "/fhir"
	}
	loc, err := time.LoadLocation(cfg.Clinic.Timezone)
	if err != nil {
		return err
	}
	cal, err := cfg.Calendar()
	if err != nil {
		return err
	}
	today := now().In(loc)
	run := now().UTC().Format("20060102T150405")
	n := 0
	used := map[string]bool{}
	enrol := func(p treatment.Protocol, followOn string) error {
		n++
		pat, err := svc.CreatePatient(ctx, app.PatientInput{
			Identifiers: []treatment.Identifier{{System: demoSystem, Value: fmt.Sprintf("DEMO-%s-%02d", run, n)}},
			Family:      "Synthetic", Given: []string{fmt.Sprintf("Demo%02d", n)},
			BirthDate: "1980-01-01", Gender: "unknown",
		})
		if err != nil {
			return fmt.Errorf("demo patient for %s: %w", p.ID, err)
		}
		start := nextOpenMorning(today, cal, p.Spacing.Weekdays, p.Integration != nil)
		prog, err := svc.CreateProgram(ctx, app.ProgramInput{
			PatientID: pat.ID, ProtocolID: p.ID, Start: start.Format("2006-01-02T15:04"), Timezone: loc.String(),
		})
		if err != nil {
			return fmt.Errorf("demo programme for %s: %w", p.ID, err)
		}
		used[p.ID] = true
		if followOn != "" {
			if prog, err = svc.AddPlan(ctx, prog.ID, app.PlanInput{ProtocolID: followOn}); err != nil {
				return fmt.Errorf("demo follow-on %s for %s: %w", followOn, p.ID, err)
			}
			used[followOn] = true
		}
		printProgram(w, p, prog, loc)
		fmt.Fprintf(w, "  FHIR: %s/CarePlan?patient=Patient/%s&_include=CarePlan:activity-reference\n", base, pat.ID)
		fmt.Fprintf(w, "        %s/Appointment?patient=Patient/%s&_sort=date\n", base, pat.ID)
		fmt.Fprintf(w, "        %s/Goal?patient=Patient/%s\n\n", base, pat.ID)
		return nil
	}
	all := svc.Protocols()
	for _, p := range all {
		if p.Kind != treatment.PlanInduction {
			continue
		}
		followOn := ""
		if len(p.FollowOn) > 0 {
			followOn = p.FollowOn[0]
		}
		if err := enrol(p, followOn); err != nil {
			return err
		}
	}
	for _, plan := range all {
		if used[plan.ID] || plan.Kind == treatment.PlanInduction {
			continue
		}
		for _, p := range all {
			if p.Kind == treatment.PlanInduction && slices.Contains(p.FollowOn, plan.ID) {
				if err := enrol(p, plan.ID); err != nil {
					return err
				}
				break
			}
		}
		if !used[plan.ID] {
			fmt.Fprintf(w, "(%s is not a follow-on of any induction protocol; not enrolled)\n\n", plan.ID)
		}
	}
	fmt.Fprintf(w, "Enrolled %d synthetic patients in %d protocols. Run `kapfhir serve` and pull the URLs above (metadata: %s/metadata).\n", n, len(used), base)
	return nil
}

// now is the demo's clock (tests set it).
var now = time.Now

// nextOpenMorning is 09:00 (or opening time, if later) on the next open day
// after t that is one of weekdays ("mon".."sun"; any day when empty) and,
// with nextDayOpen, is followed by an open day (for a next-day integration
// visit).
func nextOpenMorning(t time.Time, cal treatment.Calendar, weekdays []string, nextDayOpen bool) time.Time {
	loc := t.Location()
	for d := 1; d < 60; d++ {
		day := time.Date(t.Year(), t.Month(), t.Day()+d, 0, 0, 0, 0, loc)
		if !cal.IsOpenDay(day) {
			continue
		}
		if len(weekdays) > 0 && !slices.Contains(weekdays, strings.ToLower(day.Weekday().String()[:3])) {
			continue
		}
		if nextDayOpen && !cal.IsOpenDay(day.AddDate(0, 0, 1)) {
			continue
		}
		h := cal.Open[day.Weekday()]
		minute := max(h.Open, 9*60)
		if minute+60 > h.Close {
			minute = h.Open
		}
		return day.Add(time.Duration(minute) * time.Minute)
	}
	return time.Date(t.Year(), t.Month(), t.Day()+1, 9, 0, 0, 0, loc)
}

func printProgram(w io.Writer, p treatment.Protocol, prog treatment.Program, loc *time.Location) {
	fmt.Fprintf(w, "== %s — %s\n   programme %s, patient %s, %d doses (%s)\n", p.ID, p.Title, prog.ID, prog.PatientID, prog.Doses, prog.Route)
	for _, is := range prog.Issues {
		fmt.Fprintf(w, "   ! %s: %s\n", is.Code, is.Message)
	}
	for _, pl := range prog.Plans {
		fmt.Fprintf(w, "   plan %s: %s (%s, %s)\n", pl.ID, pl.ProtocolID, pl.Kind, pl.Status)
	}
	tw := newTable(w, "  #", "PLAN", "KIND", "DOSE", "STATUS", "WHEN ("+loc.String()+")")
	plans := map[string]string{}
	for _, pl := range prog.Plans {
		plans[pl.ID] = pl.ProtocolID
	}
	for i, s := range prog.Sessions {
		when := s.Start.In(loc).Format("Mon 2006-01-02 15:04") + "-" + s.End.In(loc).Format("15:04")
		if !s.HasSlot() && s.Window != nil {
			when = "window " + s.Window.Start.In(loc).Format("2006-01-02") + " .. " + s.Window.End.In(loc).Format("2006-01-02")
		}
		dose := ""
		if s.Dose > 0 {
			dose = fmt.Sprint(s.Dose)
		}
		tw.row(fmt.Sprintf("  %d", i+1), plans[s.PlanID], string(s.Kind), dose, string(s.Status), when)
	}
	_ = tw.flush()
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) { fmt.Fprintln(t.tw, strings.Join(cols, "\t")) }

func (t *table) flush() error { return t.tw.Flush() }
