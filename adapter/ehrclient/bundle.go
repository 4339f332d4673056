package ehrclient

import (
	"encoding/json"
	"errors"
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
