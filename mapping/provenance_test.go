package mapping

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// transmissions are a created CarePlan version whose EHR copy is known and
// an updated Patient version whose EHR copy is not.
func transmissions() []Transmission {
	device := treatment.Identifier{System: "https://kapfhir.org/fhir/sid/installation", Value: "6f1c1d7e-0000-4000-8000-000000000001"}
	clinic := treatment.Identifier{System: "https://kapfhir.org/fhir/sid/clinic", Value: "6f1c1d7e-0000-4000-8000-000000000001"}
	return []Transmission{
		{
			Type: "CarePlan", ID: "plan-ind", Version: 4, EndpointID: "ehr-main",
			EHRCopy: "https://ehr.example/fhir/CarePlan/e17/_history/2", Created: true,
			Recorded: time.Date(2026, 3, 13, 16, 0, 1, 250_000_000, time.UTC), Device: device, Clinic: clinic,
		},
		{
			Type: "Patient", ID: "pat-1", Version: 2, EndpointID: "ehr-main",
			Recorded: time.Date(2026, 3, 13, 16, 0, 2, 0, time.FixedZone("EST", -5*3600)), Device: device, Clinic: clinic,
		},
	}
}

func TestProvenanceGolden(t *testing.T) {
	var rs []Resource
	for _, tr := range transmissions() {
		r := Provenance(tr)
		SetMeta(r, 1, tr.Recorded)
		rs = append(rs, r)
	}
	golden(t, "provenance.json", render(t, rs...))
}

func TestProvenanceID(t *testing.T) {
	base := ProvenanceID("ehr", "CarePlan", "c1", 3)
	if again := ProvenanceID("ehr", "CarePlan", "c1", 3); again != base {
		t.Errorf("same send, ids %q and %q", base, again)
	}
	for _, other := range []string{
		ProvenanceID("ehr2", "CarePlan", "c1", 3),
		ProvenanceID("ehr", "Goal", "c1", 3),
		ProvenanceID("ehr", "CarePlan", "c2", 3),
		ProvenanceID("ehr", "CarePlan", "c1", 4),
		// The parts are separated: no two sends run together into one id.
		ProvenanceID("eh", "rCarePlan", "c1", 3),
	} {
		if other == base {
			t.Errorf("another send has the id %q", base)
		}
	}
	if len(base) > 64 {
		t.Errorf("id %q is longer than a FHIR id may be", base)
	}
}

func TestProvenanceIndex(t *testing.T) {
	trs := transmissions()
	tests := []struct {
		name string
		tr   Transmission
		want resource.Index
	}{
		{
			name: "CarePlan, EHR copy not indexed",
			tr:   trs[0],
			want: resource.Index{
				Refs:  []resource.Ref{{Param: "target", Target: "CarePlan/plan-ind"}},
				Dates: []resource.Date{{Param: "recorded", Lo: trs[0].Recorded, Hi: trs[0].Recorded.Add(time.Microsecond)}},
			},
		},
		{
			name: "Patient is also the patient",
			tr:   trs[1],
			want: resource.Index{
				Refs:  []resource.Ref{{Param: "target", Target: "Patient/pat-1"}, {Param: "patient", Target: "Patient/pat-1"}},
				Dates: []resource.Date{{Param: "recorded", Lo: trs[1].Recorded.UTC(), Hi: trs[1].Recorded.UTC().Add(time.Microsecond)}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ix := Index(Provenance(tt.tr))
			if diff := cmp.Diff(tt.want, ix); diff != "" {
				t.Errorf("Index (-want +got):\n%s", diff)
			}
			for _, r := range ix.Refs {
				if p, ok := resource.LookupParam(TypeProvenance, r.Param); !ok || p.Type != resource.TypeReference {
					t.Errorf("indexes %q, not a registered Provenance reference parameter", r.Param)
				}
			}
			for _, d := range ix.Dates {
				if p, ok := resource.LookupParam(TypeProvenance, d.Param); !ok || p.Type != resource.TypeDate {
					t.Errorf("indexes %q, not a registered Provenance date parameter", d.Param)
				}
			}
		})
	}
}
