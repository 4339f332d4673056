package fhir_test

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	apb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/appointment_go_proto"
	cppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/care_plan_go_proto"
	ppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/patient_go_proto"
	vspb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/valuesets_go_proto"
	"google.golang.org/protobuf/proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// fakeReader is an in-memory Reader: enough of the store contract to test
// the HTTP surface. Search filters by type and _id only and records every
// query so tests can check what the surface asked for; the real stores are
// tested by store/storetest.
type fakeReader struct {
	versions map[resource.Key][]resource.Version // oldest first
	// refs: reference param -> source -> targets ("Type/id"), for Include.
	refs    map[string]map[resource.Key][]string
	queries []resource.Query
	err     error // returned by every method when set
}

func newFake() *fakeReader {
	return &fakeReader{versions: map[resource.Key][]resource.Version{}, refs: map[string]map[resource.Key][]string{}}
}

func (f *fakeReader) put(vs ...resource.Version) {
	for _, v := range vs {
		k := resource.Key{Type: v.Type, ID: v.ID}
		f.versions[k] = append(f.versions[k], v)
	}
}

func (f *fakeReader) ref(param string, from resource.Key, to ...string) {
	if f.refs[param] == nil {
		f.refs[param] = map[resource.Key][]string{}
	}
	f.refs[param][from] = append(f.refs[param][from], to...)
}

func (f *fakeReader) Read(_ context.Context, typ, id string) (resource.Version, error) {
	if f.err != nil {
		return resource.Version{}, f.err
	}
	vs := f.versions[resource.Key{Type: typ, ID: id}]
	if len(vs) == 0 || vs[len(vs)-1].Deleted {
		return resource.Version{}, treatment.NotFound(typ, id)
	}
	return vs[len(vs)-1], nil
}

func (f *fakeReader) VRead(_ context.Context, typ, id string, vid int64) (resource.Version, error) {
	if f.err != nil {
		return resource.Version{}, f.err
	}
	for _, v := range f.versions[resource.Key{Type: typ, ID: id}] {
		if v.VersionID == vid {
			return v, nil
		}
	}
	return resource.Version{}, treatment.NotFound(typ+" version", id+"/"+strconv.FormatInt(vid, 10))
}

func (f *fakeReader) History(_ context.Context, typ, id string) ([]resource.Version, error) {
	if f.err != nil {
		return nil, f.err
	}
	vs := slices.Clone(f.versions[resource.Key{Type: typ, ID: id}])
	if len(vs) == 0 {
		return nil, treatment.NotFound(typ, id)
	}
	slices.Reverse(vs)
	return vs, nil
}

func (f *fakeReader) Search(_ context.Context, q resource.Query) (resource.Page, error) {
	f.queries = append(f.queries, q)
	if f.err != nil {
		return resource.Page{}, f.err
	}
	sortTime := func(v resource.Version) time.Time {
		if q.Sort == resource.SortLastUpdated {
			return v.LastUpdated
		}
		return time.Time{}
	}
	compare := func(a, b resource.Version) int {
		c := sortTime(a).Compare(sortTime(b))
		if c == 0 {
			c = cmp.Compare(a.ID, b.ID)
		}
		if q.Desc {
			c = -c
		}
		return c
	}
	var all []resource.Version
	for k, vs := range f.versions {
		cur := vs[len(vs)-1]
		if k.Type != q.Type || cur.Deleted || (len(q.IDs) > 0 && !slices.Contains(q.IDs, k.ID)) {
			continue
		}
		all = append(all, cur)
	}
	slices.SortFunc(all, compare)
	page := resource.Page{Total: len(all)}
	if q.Count == 0 {
		return page, nil
	}
	rest := all
	if q.After != nil {
		after := resource.Version{ID: q.After.ID, LastUpdated: q.After.Time}
		i := slices.IndexFunc(all, func(v resource.Version) bool { return compare(v, after) > 0 })
		if i < 0 {
			i = len(all)
		}
		rest = all[i:]
	}
	if len(rest) > q.Count {
		last := rest[q.Count-1]
		page.Next = &resource.Cursor{Time: sortTime(last), ID: last.ID}
		rest = rest[:q.Count]
	}
	page.Versions = rest
	return page, nil
}

func (f *fakeReader) Include(ctx context.Context, typ string, ids []string, param string) ([]resource.Version, error) {
	if f.err != nil {
		return nil, f.err
	}
	var out []resource.Version
	for _, id := range ids {
		for _, target := range f.refs[param][resource.Key{Type: typ, ID: id}] {
			ttyp, tid, _ := cutRef(target)
			v, err := f.Read(ctx, ttyp, tid)
			if err != nil {
				continue
			}
			if !slices.ContainsFunc(out, func(o resource.Version) bool { return o.Type == v.Type && o.ID == v.ID }) {
				out = append(out, v)
			}
		}
	}
	slices.SortFunc(out, func(a, b resource.Version) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

func cutRef(ref string) (string, string, bool) {
	for i := range len(ref) {
		if ref[i] == '/' {
			return ref[:i], ref[i+1:], true
		}
	}
	return "", ref, false
}

// t0 is the fixture clock.
var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func patientRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_PatientId{PatientId: &d4pb.ReferenceId{Value: id}}}
}

func meta(vid int64, at time.Time) *d4pb.Meta {
	return &d4pb.Meta{
		VersionId:   &d4pb.Id{Value: strconv.FormatInt(vid, 10)},
		LastUpdated: &d4pb.Instant{ValueUs: at.UnixMicro(), Timezone: "Z", Precision: d4pb.Instant_MICROSECOND},
	}
}

func carePlan(id string, vid int64, at time.Time, status c4pb.RequestStatusCode_Value) *cppb.CarePlan {
	return &cppb.CarePlan{
		Id:      &d4pb.Id{Value: id},
		Meta:    meta(vid, at),
		Status:  &cppb.CarePlan_StatusCode{Value: status},
		Intent:  &cppb.CarePlan_IntentCode{Value: vspb.CarePlanIntentValueSet_PLAN},
		Subject: patientRef("p1"),
	}
}

func patient(id string, vid int64, at time.Time) *ppb.Patient {
	return &ppb.Patient{Id: &d4pb.Id{Value: id}, Meta: meta(vid, at)}
}

func appointment(id string, vid int64, at time.Time) *apb.Appointment {
	return &apb.Appointment{
		Id:     &d4pb.Id{Value: id},
		Meta:   meta(vid, at),
		Status: &apb.Appointment_StatusCode{Value: c4pb.AppointmentStatusCode_BOOKED},
		Participant: []*apb.Appointment_Participant{{
			Actor:  patientRef("p1"),
			Status: &apb.Appointment_Participant_StatusCode{Value: c4pb.ParticipationStatusCode_ACCEPTED},
		}},
	}
}

// version renders a proto the way the write path does: once, with fhirjson.
func version(t testing.TB, typ, id string, vid int64, at time.Time, m proto.Message) resource.Version {
	t.Helper()
	b, err := fhirjson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return resource.Version{Type: typ, ID: id, VersionID: vid, LastUpdated: at, JSON: b}
}

// fixture stores: Patient p1; CarePlan cp1 (3 versions, active) referencing
// Appointment a1 (activity) and p1 (subject); CarePlans cp2..cp5 (one version
// each).
func fixture(t testing.TB) *fakeReader {
	t.Helper()
	f := newFake()
	f.put(version(t, "Patient", "p1", 1, t0, patient("p1", 1, t0)))
	for vid := int64(1); vid <= 3; vid++ {
		at := t0.Add(time.Duration(vid) * time.Hour)
		status := c4pb.RequestStatusCode_DRAFT
		if vid == 3 {
			status = c4pb.RequestStatusCode_ACTIVE
		}
		f.put(version(t, "CarePlan", "cp1", vid, at, carePlan("cp1", vid, at, status)))
	}
	for i := 2; i <= 5; i++ {
		id := "cp" + strconv.Itoa(i)
		at := t0.Add(time.Duration(10-i) * time.Minute)
		f.put(version(t, "CarePlan", id, 1, at, carePlan(id, 1, at, c4pb.RequestStatusCode_ACTIVE)))
	}
	f.put(version(t, "Appointment", "a1", 1, t0, appointment("a1", 1, t0)))
	cp1 := resource.Key{Type: "CarePlan", ID: "cp1"}
	f.ref("activity-reference", cp1, "Appointment/a1")
	f.ref("subject", cp1, "Patient/p1")
	f.ref("subject", resource.Key{Type: "CarePlan", ID: "cp2"}, "Patient/p1")
	return f
}
