package mapping

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	provpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/provenance_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// TypeProvenance is the Provenance resource type.
const TypeProvenance = "Provenance"

// Code systems of the Provenance (each code used below is defined there).
const (
	sysDataOperation   = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
	sysParticipantType = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
)

// Transmission is one resource version kapfhir sent to an EHR, as its
// Provenance records it.
type Transmission struct {
	// Type, ID and Version name the version sent.
	Type, ID string
	Version  int64
	// EndpointID is the EHR endpoint it was sent to.
	EndpointID string
	// EHRCopy is the absolute URL of the EHR's copy (its FHIR base, type,
	// id and, when known, /_history/versionId); "" when the EHR did not
	// say which resource holds it.
	EHRCopy string
	// Created is true when the EHR created its copy, false when it
	// updated one it had.
	Created bool
	// Recorded is when the EHR acknowledged the write.
	Recorded time.Time
	// Device identifies kapfhir (the installation that sent it), Clinic
	// the organization it sends for.
	Device, Clinic treatment.Identifier
}

// ProvenanceID is the id of the Provenance of sending version of typ/id to
// an endpoint: the same send recorded again has the same id.
func ProvenanceID(endpointID, typ, id string, version int64) string {
	h := sha256.Sum256([]byte(endpointID + "\x00" + typ + "\x00" + id + "\x00" + strconv.FormatInt(version, 10)))
	return "prov-" + hex.EncodeToString(h[:16])
}

// Provenance maps a transmission to an R4 Provenance: target the version
// sent ("CarePlan/123/_history/4") and, when known, the EHR's copy (the
// activity created or updated it; absolute URL); recorded the time of the
// EHR's answer; activity CREATE or UPDATE (v3 DataOperation) as the EHR
// did; one agent, kapfhir as a Device (by its installation identifier),
// type performer (it carried out the transmission), on behalf of the clinic
// (a logical reference by identifier: kapfhir has no Organization resource).
func Provenance(t Transmission) Resource {
	id := ProvenanceID(t.EndpointID, t.Type, t.ID, t.Version)
	activity := coding(sysDataOperation, "UPDATE", "revise")
	if t.Created {
		activity = coding(sysDataOperation, "CREATE", "create")
	}
	p := &provpb.Provenance{
		Id: fhirID(id),
		Target: []*d4pb.Reference{{Reference: &d4pb.Reference_Uri{
			Uri: str(t.Type + "/" + t.ID + "/_history/" + strconv.FormatInt(t.Version, 10)),
		}}},
		Recorded: instant(t.Recorded.UTC()),
		Activity: concept("", activity),
		Agent: []*provpb.Provenance_Agent{{
			Type:       concept("", coding(sysParticipantType, "performer", "Performer")),
			Who:        &d4pb.Reference{Type: uri("Device"), Identifier: identifierOf(t.Device), Display: str("kapfhir")},
			OnBehalfOf: &d4pb.Reference{Type: uri("Organization"), Identifier: identifierOf(t.Clinic)},
		}},
	}
	if t.EHRCopy != "" {
		p.Target = append(p.Target, &d4pb.Reference{
			Reference: &d4pb.Reference_Uri{Uri: str(t.EHRCopy)},
			Display:   str("the copy at EHR endpoint " + t.EndpointID),
		})
	}
	return Resource{Type: TypeProvenance, ID: id, Msg: p}
}

func identifierOf(id treatment.Identifier) *d4pb.Identifier {
	ident := &d4pb.Identifier{Value: str(id.Value)}
	if id.System != "" {
		ident.System = uri(id.System)
	}
	return ident
}
