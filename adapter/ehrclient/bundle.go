package ehrclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Entry is what the sync reads of one resource in an EHR's search Bundle.
type Entry struct {
	ResourceType string
	ID           string
	VersionID    string
	LastUpdated  time.Time
	// Identifiers are "system|value".
	Identifiers []string
	// Status is the resource's status element, when it has one.
	Status string
	// Match is false for included resources (search.mode other than match).
	Match bool
}

// Page is one page of an EHR's search answer.
type Page struct {
	Entries []Entry
	// Next is the next page's URL ("" on the last page).
	Next string
}

// bundleJSON is the part of a Bundle the sync reads. EHR answers are only
// read this way, never written: kapfhir needs ids, identifiers, versions and
// statuses from them, and another system's resources failing kapfhir's
// strict R4 validation (an unknown extension, an R4B code) must not stop the
// sync.
type bundleJSON struct {
	ResourceType string `json:"resourceType"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		Resource struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
			Status       string `json:"status"`
			Meta         struct {
				VersionID   string `json:"versionId"`
				LastUpdated string `json:"lastUpdated"`
			} `json:"meta"`
			Identifier []struct {
				System string `json:"system"`
				Value  string `json:"value"`
			} `json:"identifier"`
		} `json:"resource"`
		Search struct {
			Mode string `json:"mode"`
		} `json:"search"`
	} `json:"entry"`
}

// ParsePage reads a search answer.
func ParsePage(b []byte) (Page, error) {
	var bj bundleJSON
	if err := json.Unmarshal(b, &bj); err != nil {
		return Page{}, err
	}
	if bj.ResourceType != "Bundle" {
		return Page{}, errors.New("not a Bundle")
	}
	var p Page
	for _, l := range bj.Link {
		if l.Relation == "next" {
			p.Next = l.URL
		}
	}
	for _, e := range bj.Entry {
		r := e.Resource
		en := Entry{ResourceType: r.ResourceType, ID: r.ID, VersionID: r.Meta.VersionID, Status: r.Status, Match: e.Search.Mode == "" || e.Search.Mode == "match"}
		if t, err := time.Parse(time.RFC3339Nano, r.Meta.LastUpdated); err == nil {
			en.LastUpdated = t
		}
		for _, id := range r.Identifier {
			if id.Value != "" {
				en.Identifiers = append(en.Identifiers, id.System+"|"+id.Value)
			}
		}
		p.Entries = append(p.Entries, en)
	}
	return p, nil
}

// EntryResponse is what the sync reads of one entry of a
// transaction-response: the outcome of the request entry at the same index.
type EntryResponse struct {
	// Status is the HTTP status of the entry ("201 Created" is 201).
	Status int
	// Location is the written resource's location, "Type/id/_history/v"
	// (relative or absolute).
	Location string
	// ID and VersionID are the EHR's, from the location, the etag or the
	// resource returned in the entry, whichever says.
	ID        string
	VersionID string
}

// txResponseJSON is the part of a transaction-response the sync reads.
type txResponseJSON struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Entry        []struct {
		Resource struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
			Meta         struct {
				VersionID string `json:"versionId"`
			} `json:"meta"`
		} `json:"resource"`
		Response struct {
			Status   string `json:"status"`
			Location string `json:"location"`
			Etag     string `json:"etag"`
		} `json:"response"`
	} `json:"entry"`
}

// ParseTransactionResponse reads the EHR's answer to a transaction of n
// entries: one response per request entry, in the same order (FHIR R4
// http.html#transaction-response). types are the entries' resource types,
// to find the id in a location.
func ParseTransactionResponse(b []byte, types []string) ([]EntryResponse, error) {
	var bj txResponseJSON
	if err := json.Unmarshal(b, &bj); err != nil {
		return nil, err
	}
	if bj.ResourceType != "Bundle" || bj.Type != "transaction-response" {
		return nil, errors.New("not a transaction-response Bundle")
	}
	if len(bj.Entry) != len(types) {
		return nil, fmt.Errorf("%d responses to %d entries", len(bj.Entry), len(types))
	}
	out := make([]EntryResponse, len(types))
	for i, e := range bj.Entry {
		code, _, _ := strings.Cut(strings.TrimSpace(e.Response.Status), " ")
		st, err := strconv.Atoi(code)
		if err != nil {
			return nil, fmt.Errorf("entry %d: status %q", i, e.Response.Status)
		}
		r := EntryResponse{Status: st, Location: e.Response.Location}
		r.ID = IDFromLocation(types[i], r.Location)
		if r.ID != "" {
			r.VersionID = versionID(e.Response.Etag, r.Location)
		} else {
			r.VersionID = versionID(e.Response.Etag, "") // the location is of something else
		}
		if res := e.Resource; res.ResourceType == types[i] {
			if r.ID == "" {
				r.ID = res.ID
			}
			if r.VersionID == "" {
				r.VersionID = res.Meta.VersionID
			}
		}
		out[i] = r
	}
	return out, nil
}

// IDFromLocation returns the id of a typ resource in a location
// (".../Type/id" or ".../Type/id/_history/n", absolute or relative), or ""
// when the location names no typ resource.
func IDFromLocation(typ, loc string) string {
	parts := strings.Split(strings.Trim(pathOnly(loc), "/"), "/")
	if n := len(parts); n >= 4 && parts[n-2] == "_history" {
		parts = parts[:n-2]
	}
	if n := len(parts); n >= 2 && parts[n-2] == typ && parts[n-1] != "" && parts[n-1] != "_history" {
		return parts[n-1]
	}
	return ""
}
