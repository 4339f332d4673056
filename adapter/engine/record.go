package engine

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/mapping"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// What the engine records of its writes, in the transaction that records
// each item's result (outbox.Result.Audit and Provenance):
//
//   - an outbound-write audit record for every write request sent to the
//     EHR (PUT or POST; each entry of a transaction Bundle counts as one,
//     request "PUT Type (transaction entry)"; an item written twice, the
//     CarePlan of the reference cycle, has two), success or failure as the
//     EHR answered,
//     with the HTTP status, the request line (no query) and the EHR's ids
//     in its detail; never a body. A write that got no answer (transport
//     failure, credentials refused) is recorded as a failure too: it may
//     have reached the EHR. Nothing is recorded for an item that was not
//     sent (unchanged content, a patient not resolved, a duplicate found
//     by search).
//   - a Provenance of every version the EHR now holds complete (a Sent
//     result), kapfhir's Device performing on behalf of the clinic.

// ClinicSystem identifies the clinic that runs a kapfhir installation, by
// the installation id: the Provenance's onBehalfOf is a logical reference
// with this identifier, as kapfhir has no Organization resource for it.
const ClinicSystem = "https://kapfhir.org/fhir/sid/clinic"

// Detail keys of an outbound-write record.
const (
	DetailStatus     = "status"      // the EHR's HTTP status (absent: no answer)
	DetailRequest    = "request"     // method and path, without the query
	DetailEHRID      = "ehr-id"      // the EHR's id of its copy
	DetailEHRVersion = "ehr-version" // the EHR's versionId of its copy
)

// writeRecord is the audit record of one write of it sent to the EHR (r
// and the error the write returned); ok is false when no write was sent.
func (w *Worker) writeRecord(it outbox.Item, r result, err error) (audit.Record, bool) {
	if r.request == "" {
		return audit.Record{}, false
	}
	rec := audit.Record{
		Time:       r.at,
		Subtype:    audit.OutboundWrite,
		Outcome:    audit.Success,
		Agent:      audit.System,
		PatientID:  it.PatientID,
		EndpointID: w.ep.ID,
		Entities:   []audit.Entity{{Ref: versionRef(it.ResourceType, it.ResourceID, r.version)}},
		Detail:     map[string]string{DetailRequest: r.request},
		Source:     w.o.Source,
	}
	if r.status != 0 {
		rec.Detail[DetailStatus] = strconv.Itoa(r.status)
	}
	if r.status == http.StatusCreated {
		rec.Action = audit.ActionCreate
	}
	switch {
	case err != nil && isAuth(err):
		rec.Outcome, rec.OutcomeDesc = audit.SeriousFailure, "the EHR refused kapfhir's credentials"
	case err != nil && r.status != 0:
		rec.Outcome, rec.OutcomeDesc = audit.MinorFailure, fmt.Sprintf("the EHR answered %d; it could not be read again", r.status)
	case err != nil:
		rec.Outcome, rec.OutcomeDesc = audit.MinorFailure, "no answer from the EHR"
	case r.outcome == outbox.Sent:
		if r.ehrID != "" {
			rec.Detail[DetailEHRID] = r.ehrID
		}
		if r.ehrVersion != "" {
			rec.Detail[DetailEHRVersion] = r.ehrVersion
		}
	case r.outcome == outbox.Retry:
		rec.Outcome, rec.OutcomeDesc = audit.MinorFailure, r.errMsg
	default:
		rec.Outcome, rec.OutcomeDesc = audit.SeriousFailure, r.errMsg
	}
	return rec, true
}

// provenance is the Provenance of the version r sent, as a new resource.
// Rendering a mapped proto does not fail; if it ever did, the result is
// still recorded (the audit record holds the write) and the failure logged.
func (w *Worker) provenance(it outbox.Item, r result) *resource.Write {
	at := r.at
	if at.IsZero() {
		at = w.o.Now()
	}
	at = at.UTC().Truncate(time.Millisecond)
	inst := w.o.Source
	t := mapping.Transmission{
		Type: it.ResourceType, ID: it.ResourceID, Version: r.version, EndpointID: w.ep.ID,
		Created: r.status == http.StatusCreated, Recorded: at,
		Device: treatment.Identifier{System: audit.InstallationSystem, Value: inst},
		Clinic: treatment.Identifier{System: ClinicSystem, Value: inst},
	}
	if r.ehrID != "" {
		t.EHRCopy = strings.TrimRight(w.ep.FHIRBaseURL, "/") + "/" + it.ResourceType + "/" + r.ehrID
		if r.ehrVersion != "" {
			t.EHRCopy += "/_history/" + r.ehrVersion
		}
	}
	pw, err := mapping.Write(mapping.Provenance(t), 1, at, nil, fhirjson.Marshal)
	if err != nil {
		w.log.Error("rendering a Provenance failed", "item", it.ID, "error", err)
		return nil
	}
	return &pw
}

// versionRef is "Type/id/_history/version" ("Type/id" without a version).
func versionRef(typ, id string, version int64) string {
	if version <= 0 {
		return typ + "/" + id
	}
	return typ + "/" + id + "/_history/" + strconv.FormatInt(version, 10)
}
