package mapping

import (
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	ppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/patient_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// Patient maps a patient to a US Core Patient: kapfhir's identifier first,
// then the domain's identifiers, the name, gender and birth date. There is no
// narrative: it would only repeat PHI.
func Patient(p treatment.Patient, o Options) Resource {
	pat := &ppb.Patient{
		Id:         fhirID(p.ID),
		Meta:       meta(profPatient),
		Identifier: []*d4pb.Identifier{o.identifier(p.ID)},
		Gender:     &ppb.Patient_GenderCode{Value: gender(p.Gender)},
	}
	for _, id := range p.Identifiers {
		ident := &d4pb.Identifier{Value: str(id.Value)}
		if id.System != "" {
			ident.System = uri(id.System)
		}
		pat.Identifier = append(pat.Identifier, ident)
	}
	if p.Family != "" || len(p.Given) > 0 {
		n := &d4pb.HumanName{}
		if p.Family != "" {
			n.Family = str(p.Family)
		}
		for _, g := range p.Given {
			if g != "" {
				n.Given = append(n.Given, str(g))
			}
		}
		pat.Name = []*d4pb.HumanName{n}
	}
	if d, err := time.Parse(time.DateOnly, p.BirthDate); err == nil {
		pat.BirthDate = date(d, time.UTC)
	}
	return Resource{Type: TypePatient, ID: p.ID, Msg: pat}
}

// gender maps the domain's gender; anything unknown (or missing) is
// "unknown", since US Core requires a gender.
func gender(g string) c4pb.AdministrativeGenderCode_Value {
	switch g {
	case "male":
		return c4pb.AdministrativeGenderCode_MALE
	case "female":
		return c4pb.AdministrativeGenderCode_FEMALE
	case "other":
		return c4pb.AdministrativeGenderCode_OTHER
	}
	return c4pb.AdministrativeGenderCode_UNKNOWN
}
