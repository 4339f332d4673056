package engine

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/outbound"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

// Patient look-up. Every batch needs its patient's id in the EHR, found by
// the endpoint's patient identifier system. Searching for each patient on
// its own costs one request per batch (a 6-infusion programme is 16
// resources, so 1 request in 17 would be a search); instead a look-up also
// asks for the patients whose batches are next in the queue, in one search
// with the identifiers OR-ed (identifier=s|a,s|b,...), and keeps their
// answers for a short while for the lanes about to lease them.
const (
	// lookAhead is how many patients one search asks for.
	lookAhead = 32
	// lookupTTL is how long an answer looked up ahead is used. An answer is
	// used once; a patient merged or deleted in the EHR within this window
	// is caught by the write that references it, or at the next batch.
	lookupTTL = 30 * time.Second
)

// leasedPatients notes the patients of batches just leased, to be looked
// up with the next search (Upcoming lists only patients nobody leased).
func (w *Worker) leasedPatients(bs []outbox.Batch) {
	w.lookupMu.Lock()
	defer w.lookupMu.Unlock()
	for _, b := range bs {
		if _, ok := w.lookedUp[b.PatientID]; !ok {
			w.leased[b.PatientID] = true
		}
	}
}

// patientAnswer is what the EHR said about one patient.
type patientAnswer struct {
	ehrID   string
	problem string // why the patient cannot be referenced ("" when ehrID is set)
	at      time.Time
}

// lookupPatient returns the EHR's answer for one of kapfhir's patients.
// Look-ups are serialised: a lane waiting for another's search usually
// finds its own answer in it.
func (w *Worker) lookupPatient(ctx context.Context, patientID string) (patientAnswer, error) {
	w.lookupMu.Lock()
	defer w.lookupMu.Unlock()
	now := w.o.Now()
	for id, a := range w.lookedUp {
		if now.Sub(a.at) >= lookupTTL {
			delete(w.lookedUp, id)
		}
	}
	if a, ok := w.lookedUp[patientID]; ok {
		delete(w.lookedUp, patientID)
		return a, nil
	}
	delete(w.leased, patientID)
	ids := []string{patientID}
	add := func(id string) {
		if _, ok := w.lookedUp[id]; !ok && id != patientID && len(ids) < lookAhead && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	// First the patients the lanes have leased and not looked up yet (the
	// queue no longer lists them), then those next in the queue.
	for id := range w.leased {
		add(id)
	}
	if next, err := w.o.Store.Upcoming(ctx, w.ep.ID, now, lookAhead); err == nil {
		for _, id := range next {
			add(id)
		}
	}
	answers, err := w.searchPatients(ctx, ids, now)
	if err != nil {
		return patientAnswer{}, err
	}
	for _, id := range ids[1:] {
		if a, ok := answers[id]; ok {
			w.lookedUp[id] = a
			delete(w.leased, id)
		}
	}
	return answers[patientID], nil
}

// searchPatients looks the patients up in the EHR in one search (or one
// per patient when the EHR pages the answer).
func (w *Worker) searchPatients(ctx context.Context, ids []string, now time.Time) (map[string]patientAnswer, error) {
	system := w.ep.PatientIdentifierSystem
	answers := make(map[string]patientAnswer, len(ids))
	byIdent := map[string][]string{} // "system|value" -> our patient ids
	var idents []string
	for _, id := range ids {
		v, err := w.o.Store.Read(ctx, "Patient", id)
		if err != nil {
			answers[id] = patientAnswer{problem: "the patient is not in kapfhir's store", at: now}
			continue
		}
		cr, err := fhirjson.UnmarshalStored(v.JSON)
		if err != nil {
			return nil, fmt.Errorf("patient %s: %w", id, err)
		}
		values := outbound.Identifiers(cr, system)
		if len(values) == 0 {
			answers[id] = patientAnswer{problem: "the patient has no identifier in " + system, at: now}
			continue
		}
		ident := system + "|" + values[0]
		if _, ok := byIdent[ident]; !ok {
			idents = append(idents, ident)
		}
		byIdent[ident] = append(byIdent[ident], id)
	}
	if len(idents) == 0 {
		return answers, nil
	}
	found, complete, err := w.searchIdentifiers(ctx, "Patient", idents)
	if err != nil {
		return nil, err
	}
	if !complete && len(idents) > 1 {
		// The EHR paged the answer: ask for the first identifier alone (the
		// other patients are looked up when their batches come).
		idents = idents[:1]
		if found, _, err = w.searchIdentifiers(ctx, "Patient", idents); err != nil {
			return nil, err
		}
	}
	for _, ident := range idents {
		matches := found[ident]
		var a patientAnswer
		switch len(matches) {
		case 1:
			a.ehrID = matches[0]
		case 0:
			a.problem = "the EHR has no patient with this patient's identifier in " + system
		default:
			a.problem = fmt.Sprintf("the EHR has %d patients with this patient's identifier in %s (duplicate: reconcile in the EHR)", len(matches), system)
		}
		a.at = now
		for _, id := range byIdent[ident] {
			answers[id] = a
		}
	}
	return answers, nil
}

// searchIdentifiers searches typ for any of idents ("system|value") and
// returns the ids of the matches carrying each; complete is false when the
// EHR paged the answer (a next link).
func (w *Worker) searchIdentifiers(ctx context.Context, typ string, idents []string) (map[string][]string, bool, error) {
	escaped := make([]string, len(idents))
	for i, ident := range idents {
		system, value, _ := strings.Cut(ident, "|")
		escaped[i] = escapeSearch(system) + "|" + escapeSearch(value)
	}
	q := url.Values{"identifier": {strings.Join(escaped, ",")}}
	if len(idents) > 1 {
		// Room for duplicates, which must be seen to be reported.
		q.Set("_count", strconv.Itoa(2*len(idents)+8))
	}
	path := typ + "?" + q.Encode()
	resp, err := w.o.EHR.Do(ctx, ehrclient.Request{Method: http.MethodGet, Path: path, Idempotent: true})
	if err != nil {
		return nil, false, err
	}
	if resp.Status != http.StatusOK {
		return nil, false, &treatment.Error{Kind: treatment.KindUnavailable, Msg: fmt.Sprintf("search %s by identifier: the EHR answered %d", typ, resp.Status)}
	}
	page, err := ehrclient.ParsePage(resp.Body)
	if err != nil {
		return nil, false, &treatment.Error{Kind: treatment.KindUnavailable, Msg: "search " + typ + " by identifier: the answer is not a Bundle", Err: err}
	}
	found := map[string][]string{}
	for _, e := range page.Entries {
		if !e.Match || e.ResourceType != typ {
			continue
		}
		for _, ident := range idents {
			if slices.Contains(e.Identifiers, ident) && !slices.Contains(found[ident], e.ID) {
				found[ident] = append(found[ident], e.ID)
			}
		}
	}
	return found, page.Next == "", nil
}

// escapeSearch escapes a search value's reserved characters (FHIR search
// §2.1.1.4: \ , $ |).
func escapeSearch(s string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `$`, `\$`, `|`, `\|`).Replace(s)
}
