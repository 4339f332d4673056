package sqlstore

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// builder accumulates SQL conditions and their arguments in a dialect's
// placeholders; values only ever travel as arguments.
type builder struct {
	d     *Dialect
	conds []string
	args  []any
}

// arg adds an argument and returns its placeholder.
func (b *builder) arg(v any) string {
	b.args = append(b.args, v)
	if b.d.Numbered {
		return "$" + strconv.Itoa(len(b.args))
	}
	return "?"
}

// arg2 returns two placeholders for the same value: one argument referenced
// twice where placeholders are numbered, else two arguments.
func (b *builder) arg2(v any) (string, string) {
	p := b.arg(v)
	if b.d.Numbered {
		return p, p
	}
	return p, b.arg(v)
}

// in is the condition that col is one of vs.
func (b *builder) in(col string, vs []string) string {
	if b.d.Arrays {
		return col + " = ANY(" + b.arg(vs) + "::text[])"
	}
	ps := make([]string, len(vs))
	for i, v := range vs {
		ps[i] = b.arg(v)
	}
	return col + " IN (" + strings.Join(ps, ", ") + ")"
}

func (b *builder) where() string { return strings.Join(b.conds, " AND ") }

// dateCond is the condition for comparing the range [lo, hi) (SQL
// expressions) with the filter's range, as documented on resource.DateFilter.
func (b *builder) dateCond(lo, hi string, f resource.DateFilter) (string, error) {
	flo, fhi := Micros(f.Lo), Micros(f.Hi)
	switch f.Prefix {
	case resource.EQ, "":
		return fmt.Sprintf("(%s >= %s AND %s <= %s)", lo, b.arg(flo), hi, b.arg(fhi)), nil
	case resource.NE:
		return fmt.Sprintf("NOT (%s >= %s AND %s <= %s)", lo, b.arg(flo), hi, b.arg(fhi)), nil
	case resource.LT:
		return fmt.Sprintf("%s < %s", lo, b.arg(flo)), nil
	case resource.LE:
		return fmt.Sprintf("%s < %s", lo, b.arg(fhi)), nil
	case resource.GT:
		return fmt.Sprintf("%s > %s", hi, b.arg(fhi)), nil
	case resource.GE:
		return fmt.Sprintf("%s > %s", hi, b.arg(flo)), nil
	}
	return "", treatment.Errorf(treatment.KindInvalid, "unsupported date prefix %q", f.Prefix)
}

// filters adds the query's filters (everything but paging) to b.
//
// One index filter drives the search: it is written as a non-correlated
// "r.id IN (SELECT ...)" so that the planner starts from that index (a
// patient's references, an identifier) instead of probing every resource of
// the type; the others are correlated EXISTS probes on the rows it yields.
// The driver is the first reference filter, else an identifier token, else
// the first token filter (ids, when given, drive by themselves).
func (b *builder) filters(q resource.Query) error {
	b.conds = append(b.conds, "r.type = "+b.arg(q.Type), b.d.Not("r.deleted"))
	driver := -1 // index into tokens (t) or refs (r), see below
	driverRefs := false
	switch {
	case len(q.IDs) > 0:
		b.conds = append(b.conds, b.in("r.id", q.IDs))
	case len(q.Refs) > 0:
		driver, driverRefs = 0, true
	case len(q.Tokens) > 0:
		driver = 0
		for i, f := range q.Tokens {
			if f.Param == "identifier" {
				driver = i
				break
			}
		}
	}
	for i, f := range q.Tokens {
		drive := !driverRefs && i == driver
		var typ string
		if drive {
			typ = b.arg(q.Type)
		}
		param := b.arg(f.Param)
		var alts []string
		for _, v := range f.Values {
			switch {
			case v.AnySystem && v.Code == "":
				alts = append(alts, b.d.True())
			case v.AnySystem:
				alts = append(alts, "t.code = "+b.arg(v.Code))
			case v.Code == "":
				alts = append(alts, "t.system = "+b.arg(v.System))
			default:
				alts = append(alts, "(t.system = "+b.arg(v.System)+" AND t.code = "+b.arg(v.Code)+")")
			}
		}
		if len(alts) == 0 {
			alts = []string{b.d.False()}
		}
		match := "t.param = " + param + " AND (" + strings.Join(alts, " OR ") + ")"
		if drive {
			b.conds = append(b.conds, "r.id IN (SELECT t.id FROM search_tokens t WHERE t.type = "+typ+" AND "+match+")")
		} else {
			b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND "+match+")")
		}
	}
	for i, f := range q.Refs {
		if len(f.Targets) == 0 {
			b.conds = append(b.conds, b.d.False())
			continue
		}
		if driverRefs && i == driver {
			typ, param := b.arg(q.Type), b.arg(f.Param)
			b.conds = append(b.conds, "r.id IN (SELECT s.id FROM search_refs s WHERE s.type = "+typ+" AND s.param = "+param+" AND "+b.in("s.target", f.Targets)+")")
			continue
		}
		param := b.arg(f.Param)
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = "+param+" AND "+b.in("s.target", f.Targets)+")")
	}
	for _, f := range q.Dates {
		if f.Param == "_lastUpdated" {
			// A version's lastUpdated is the point range [lu, lu+1µs).
			c, err := b.dateCond("r.last_updated", "(r.last_updated + 1)", f)
			if err != nil {
				return err
			}
			b.conds = append(b.conds, c)
			continue
		}
		param := b.arg(f.Param)
		c, err := b.dateCond("d.lo", "d.hi", f)
		if err != nil {
			return err
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_dates d WHERE d.type = r.type AND d.id = r.id AND d.param = "+param+" AND "+c+")")
	}
	return nil
}

// sortColumn returns the column a sort orders by before the id ("" for _id).
func sortColumn(s resource.SortField) (string, error) {
	switch s {
	case resource.SortID, "":
		return "", nil
	case resource.SortDate:
		return "r.sort_date", nil
	case resource.SortLastUpdated:
		return "r.last_updated", nil
	}
	return "", treatment.Errorf(treatment.KindInvalid, "unsupported sort %q", s)
}

// SearchSQL is the SQL of one search: a count of all matches and, unless the
// query asks for none, one keyset page of them.
type SearchSQL struct {
	CountSQL  string
	CountArgs []any
	// PageSQL selects VersionCols and the sort key (an int64) of at most
	// Count+1 rows; "" when the query's Count is 0.
	PageSQL  string
	PageArgs []any
	// Keyed is whether the page is ordered by a time before the id, so a
	// cursor carries the time.
	Keyed bool
}

// BuildSearch returns the SQL of q in dialect d. Pages are keyset pages: rows
// are ordered by (sort value, id), both ascending or both descending, and a
// page continues strictly after its cursor.
func BuildSearch(d *Dialect, q resource.Query) (SearchSQL, error) {
	if q.Count < 0 {
		return SearchSQL{}, treatment.Errorf(treatment.KindInvalid, "count must not be negative")
	}
	col, err := sortColumn(q.Sort)
	if err != nil {
		return SearchSQL{}, err
	}
	b := builder{d: d}
	if err := b.filters(q); err != nil {
		return SearchSQL{}, err
	}
	s := SearchSQL{
		CountSQL:  `SELECT COUNT(*) FROM resources r WHERE ` + b.where(),
		CountArgs: b.args[:len(b.args):len(b.args)],
		Keyed:     col != "",
	}
	if q.Count == 0 {
		return s, nil
	}

	dir, cmp := "ASC", ">"
	if q.Desc {
		dir, cmp = "DESC", "<"
	}
	order := "r.id " + dir
	if col != "" {
		order = col + " " + dir + ", " + order
	}
	if q.After != nil {
		if col == "" {
			b.conds = append(b.conds, "r.id "+cmp+" "+b.arg(q.After.ID))
		} else {
			t1, t2 := b.arg2(Micros(q.After.Time))
			b.conds = append(b.conds, fmt.Sprintf("(%s %s %s OR (%s = %s AND r.id %s %s))", col, cmp, t1, col, t2, cmp, b.arg(q.After.ID)))
		}
	}
	sortCol := col
	if sortCol == "" {
		sortCol = d.ZeroKey
	}
	s.PageSQL = `SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json, ` + sortCol +
		` FROM resources r WHERE ` + b.where() + ` ORDER BY ` + order + ` LIMIT ` + b.arg(q.Count+1)
	s.PageArgs = b.args
	return s, nil
}

// includeTargetsSQL selects the distinct reference targets of param from the
// resources of type typ with the given ids.
func includeTargetsSQL(d *Dialect, typ string, ids []string, param string) (string, []any) {
	b := builder{d: d}
	b.conds = append(b.conds, "type = "+b.arg(typ), "param = "+b.arg(param), b.in("id", ids))
	return `SELECT DISTINCT target FROM search_refs WHERE ` + b.where(), b.args
}
