package audit_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/treatment"
)

func TestPrepareDefaults(t *testing.T) {
	in := audit.Record{
		Time:    time.Date(2026, 5, 4, 10, 0, 0, 123456789, time.FixedZone("CEST", 2*3600)),
		Subtype: audit.SearchType,
		Source:  source,
		Entities: []audit.Entity{
			{Query: "Goal?patient=p1"},
			{Ref: "Goal/g1"},
			{Identifier: "client:app-1"},
			{Ref: "Goal/g2", Role: audit.RoleSecurityResource},
		},
	}
	got, err := audit.Prepare(in)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	want := in
	want.Time = time.Date(2026, 5, 4, 8, 0, 0, 123456000, time.UTC)
	want.Type, want.Action = audit.TypeRest, audit.ActionExecute
	want.Entities = []audit.Entity{
		{Query: "Goal?patient=p1", Role: audit.RoleQuery},
		{Ref: "Goal/g1", Role: audit.RoleDomainResource},
		{Identifier: "client:app-1", Role: audit.RoleSecurityResource},
		{Ref: "Goal/g2", Role: audit.RoleSecurityResource},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Prepare (-want +got):\n%s", diff)
	}
	if got.Time.Location() != time.UTC {
		t.Errorf("time is in %v, want UTC", got.Time.Location())
	}
	if in.Entities[0].Role != "" {
		t.Error("Prepare changed the caller's entities")
	}

	// Every subtype has a type and an action.
	for _, sub := range []audit.Subtype{audit.Read, audit.VRead, audit.HistoryInstance, audit.SearchType, audit.Create, audit.Update, audit.Delete,
		audit.TokenIssued, audit.TokenRefused, audit.ConfigChange, audit.ClientChange, audit.KeyChange, audit.OutboundWrite, audit.InboundPoll,
		audit.Replay, audit.Prune} {
		if !sub.Known() || audit.TypeOf(sub) == "" || audit.ActionOf(sub) == "" {
			t.Errorf("%s: known %v, type %q, action %q", sub, sub.Known(), audit.TypeOf(sub), audit.ActionOf(sub))
		}
	}
	// An explicit type and action are kept.
	r, err := audit.Prepare(audit.Record{Time: t0, Subtype: audit.ClientChange, Action: audit.ActionDelete, Type: audit.TypeApplicationActivity, Source: source})
	if err != nil || r.Action != audit.ActionDelete || r.Type != audit.TypeApplicationActivity {
		t.Errorf("Prepare kept action %q type %q (%v)", r.Action, r.Type, err)
	}
}

func TestPrepareInvalid(t *testing.T) {
	good := audit.Record{Time: t0, Subtype: audit.Read, Source: source}
	tests := []struct {
		name   string
		edit   func(r *audit.Record)
		fields []string
	}{
		{"everything wrong", func(r *audit.Record) {
			*r = audit.Record{Subtype: "peek", Type: "x", Action: "Q", Outcome: 1}
		}, []string{"time", "subtype", "type", "action", "outcome", "source"}},
		{"two actions", func(r *audit.Record) { r.Action = "CR" }, []string{"action"}},
		{"entity with nothing", func(r *audit.Record) { r.Entities = []audit.Entity{{}} }, []string{"entities[0]"}},
		{"entity with two", func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "A/b"}, {Ref: "A/b", Identifier: "x"}} }, []string{"entities[1]"}},
		{"entity bad ref", func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "Goal"}} }, []string{"entities[0].ref"}},
		{"entity bad role", func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "Goal/g", Role: "1"}} }, []string{"entities[0].role"}},
		{"poll without endpoint", func(r *audit.Record) { r.Subtype = audit.InboundPoll }, []string{"endpointId"}},
		{"detail too big", func(r *audit.Record) { r.Detail = map[string]string{"k": strings.Repeat("v", 1025)} }, []string{"detail"}},
		{"detail empty key", func(r *audit.Record) { r.Detail = map[string]string{"": "v"} }, []string{"detail"}},
		{"not UTF-8", func(r *audit.Record) { r.OutcomeDesc = "\xff" }, []string{"record"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good
			tt.edit(&r)
			_, err := audit.Prepare(r)
			var te *treatment.Error
			if !errors.As(err, &te) || te.Kind != treatment.KindInvalid {
				t.Fatalf("Prepare = %v, want an invalid error", err)
			}
			var fields []string
			for _, f := range te.Fields {
				fields = append(fields, f.Field)
			}
			if diff := cmp.Diff(tt.fields, fields); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			// Reasons name the rule, never the value.
			if strings.Contains(te.Error(), "vvvv") || strings.Contains(te.Error(), "\xff") {
				t.Errorf("error %q echoes the value", te.Error())
			}
		})
	}
}

func TestIDs(t *testing.T) {
	for _, seq := range []int64{1, 42, 1 << 40} {
		got, ok := audit.SeqOf(audit.IDFor(seq))
		if !ok || got != seq {
			t.Errorf("SeqOf(IDFor(%d)) = %d, %v", seq, got, ok)
		}
	}
	for _, id := range []string{"", "ae-", "ae-0", "ae-01", "ae--1", "ae-+1", "ae-1x", "1", "AE-1", "ae-99999999999999999999"} {
		if seq, ok := audit.SeqOf(id); ok {
			t.Errorf("SeqOf(%q) = %d, want not an id", id, seq)
		}
	}
}

func TestRefKey(t *testing.T) {
	tests := map[string]string{
		"CarePlan/abc":                  "CarePlan/abc",
		"CarePlan/abc/_history/3":       "CarePlan/abc",
		"CarePlan":                      "",
		"CarePlan/":                     "",
		"carePlan/abc":                  "",
		"CarePlan/abc/_history/":        "",
		"CarePlan/abc/x/3":              "",
		"https://ehr.example/Patient/1": "",
		"urn:uuid:1234":                 "",
		"Patient/1?x=y":                 "",
	}
	for in, want := range tests {
		if got := audit.RefKey(in); got != want {
			t.Errorf("RefKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestKeys(t *testing.T) {
	r := audit.Record{
		PatientID: "p1",
		Entities: []audit.Entity{
			{Ref: "CarePlan/c1/_history/2"}, {Ref: "CarePlan/c1/_history/3"}, {Ref: "Patient/p1"},
			{Identifier: "client:a"}, {Query: "Goal?x=y"},
		},
	}
	want := []string{"Patient/p1", "CarePlan/c1", "client:a"}
	if diff := cmp.Diff(want, r.Keys()); diff != "" {
		t.Errorf("Keys (-want +got):\n%s", diff)
	}
}
