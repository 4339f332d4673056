// Package resource is the shared, storage-neutral model of stored FHIR
// resource versions and of searching them: what the store persists and
// indexes, what the FHIR REST surface asks for, and which search parameters
// exist. It is plain data (standard library only) so that the fhir package
// and the store implementations can agree on types without importing each other.
package resource

import "time"

// Version is one stored version of a FHIR resource. JSON is the exact bytes
// rendered once on write (meta.versionId and meta.lastUpdated included); the
// read path serves them as they are.
type Version struct {
	Type        string
	ID          string
	VersionID   int64
	LastUpdated time.Time
	Deleted     bool
	JSON        []byte
}

// Key names a resource.
type Key struct {
	Type string
	ID   string
}

// Ref formats the key as a relative reference, "Type/id".
func (k Key) Ref() string { return k.Type + "/" + k.ID }

// Token is an indexed coded value (identifier, status, code, category).
type Token struct {
	Param  string
	System string
	Code   string
}

// Ref is an indexed reference; Target is a relative reference "Type/id".
type Ref struct {
	Param  string
	Target string
}

// Date is an indexed date or period as a half-open range [Lo, Hi).
// A point in time has Hi = Lo + 1µs.
type Date struct {
	Param string
	Lo    time.Time
	Hi    time.Time
}

// Index is what a version is searchable by. SortDate is the value `_sort=date`
// orders by (zero when the resource has none: it sorts first ascending).
type Index struct {
	Tokens   []Token
	Refs     []Ref
	Dates    []Date
	SortDate time.Time
}

// Write is a new version to store: the caller renders JSON with the version id
// and lastUpdated it asked the store for, and passes the content hash (of the
// resource without meta) so unchanged content is not versioned again.
type Write struct {
	Version Version
	Hash    []byte
	Index   Index
}
