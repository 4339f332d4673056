package app

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/mapping"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// PatientInput is what enrolling a patient takes.
type PatientInput struct {
	Identifiers []treatment.Identifier
	Family      string
	Given       []string
	BirthDate   string
	Gender      string
}

var genders = map[string]bool{"male": true, "female": true, "other": true, "unknown": true}

func (s *Service) validatePatient(in PatientInput) error {
	var p treatment.Problems
	if len(in.Identifiers) == 0 {
		p.Add("identifier", "at least one identifier is required")
	}
	seen := map[treatment.Identifier]bool{}
	for i, id := range in.Identifiers {
		f := "identifier[" + strconv.Itoa(i) + "]"
		if u, err := url.Parse(id.System); id.System == "" || err != nil || u.Scheme == "" {
			p.Add(f+".system", "must be an absolute URI")
		}
		if strings.TrimSpace(id.Value) == "" || len(id.Value) > 256 {
			p.Add(f+".value", "must be 1-256 characters")
		}
		if seen[id] {
			p.Add(f, "duplicates an earlier identifier")
		}
		seen[id] = true
	}
	if strings.TrimSpace(in.Family) == "" && len(in.Given) == 0 {
		p.Add("name", "family or given name is required")
	}
	if len(in.Family) > 200 {
		p.Add("name.family", "must be at most 200 characters")
	}
	for i, g := range in.Given {
		if strings.TrimSpace(g) == "" || len(g) > 200 {
			p.Add("name.given["+strconv.Itoa(i)+"]", "must be 1-200 characters")
		}
	}
	if in.BirthDate == "" {
		p.Add("birthDate", "is required (YYYY-MM-DD)")
	} else if d, err := time.Parse(time.DateOnly, in.BirthDate); err != nil {
		p.Add("birthDate", "must be a date YYYY-MM-DD")
	} else if d.After(s.now()) || d.Year() < 1900 {
		p.Add("birthDate", "must be between 1900-01-01 and today")
	}
	if !genders[in.Gender] {
		p.Add("gender", "must be male, female, other or unknown")
	}
	return p.Err("invalid patient")
}

// CreatePatient enrols a patient and stores its FHIR Patient.
func (s *Service) CreatePatient(ctx context.Context, in PatientInput) (treatment.Patient, error) {
	if err := s.validatePatient(in); err != nil {
		return treatment.Patient{}, err
	}
	now := s.timestamp()
	p := treatment.Patient{
		ID:          s.newID(),
		Identifiers: in.Identifiers,
		Family:      strings.TrimSpace(in.Family),
		Given:       in.Given,
		BirthDate:   in.BirthDate,
		Gender:      in.Gender,
		Created:     now,
		Updated:     now,
	}
	err := s.inTx(ctx, func(tx store.Tx) error {
		if err := tx.CreatePatient(ctx, p); err != nil {
			return err
		}
		eps, err := tx.Endpoints(ctx)
		if err != nil {
			return err
		}
		_, err = s.put(ctx, tx, mapping.Patient(p, s.opts), p.ID, eps)
		return err
	})
	if err != nil {
		return treatment.Patient{}, err
	}
	s.log.InfoContext(ctx, "patient enrolled", "patient", p.ID)
	return p, nil
}

// Patient returns a patient, or not_found.
func (s *Service) Patient(ctx context.Context, id string) (treatment.Patient, error) {
	return s.store.Patient(ctx, id)
}
