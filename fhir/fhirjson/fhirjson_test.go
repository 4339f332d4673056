package fhirjson

import (
	"testing"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	ppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/patient_go_proto"
)

func TestRoundTrip(t *testing.T) {
	p := &ppb.Patient{
		Id:     &d4pb.Id{Value: "p1"},
		Gender: &ppb.Patient_GenderCode{Value: c4pb.AdministrativeGenderCode_FEMALE},
		Identifier: []*d4pb.Identifier{{
			System: &d4pb.Uri{Value: "urn:example:mrn"},
			Value:  &d4pb.String{Value: "123"},
		}},
	}
	b, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"gender":"female","id":"p1","identifier":[{"system":"urn:example:mrn","value":"123"}],"resourceType":"Patient"}`; got != want {
		t.Errorf("Marshal = %s, want %s", got, want)
	}
	cr, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if cr.GetPatient().GetId().GetValue() != "p1" {
		t.Errorf("round trip lost the id: %v", cr)
	}
	if err := Validate([]byte(`{"resourceType":"Patient","gender":"nope"}`)); err == nil {
		t.Error("Validate accepted an invalid gender")
	}
}
