package fhir

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/resource"
)

// Page sizes.
const (
	defaultCount = 20
	maxCount     = 1000
)

// searchRequest is a parsed, validated search.
type searchRequest struct {
	q resource.Query
	// includes are the reference parameters of q.Type to _include.
	includes []string
	// empty: the filters cannot match anything (disjoint _id sets).
	empty bool
	// link is the normalized query for the self and next links, without _cursor.
	link url.Values
	// cursor is the _cursor given, "" on the first page.
	cursor string
}

func (s *Server) searchGet(c echo.Context) error {
	// Parse the query here: Echo's QueryParams drops what it cannot decode,
	// which would silently widen the search.
	vals, err := url.ParseQuery(c.Request().URL.RawQuery)
	if err != nil {
		if _, terr := resourceType(c); terr != nil {
			return terr
		}
		return InvalidParam("", "the query string cannot be parsed (bad %-escape or ';')")
	}
	return s.search(c, vals)
}

// searchPost is POST [type]/_search: the parameters come as a form body
// (and may also be in the URL).
func (s *Server) searchPost(c echo.Context) error {
	if _, err := resourceType(c); err != nil {
		return err
	}
	form, err := searchForm(c.Request())
	if err != nil {
		return err
	}
	return s.search(c, form)
}

// searchForm reads the parameters of POST _search: the form body, and the
// URL's query.
func searchForm(req *http.Request) (url.Values, error) {
	mt, _, err := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
	if err != nil || mt != echo.MIMEApplicationForm {
		return nil, UnsupportedMediaType("POST _search takes an application/x-www-form-urlencoded body")
	}
	if err := req.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body exceeds %d bytes", mbe.Limit))
		}
		return nil, InvalidParam("", "the form body cannot be parsed")
	}
	if !resource.PlainValues(req.Form) {
		return nil, InvalidParam("", "the form body holds control characters or invalid UTF-8")
	}
	return req.Form, nil
}

func (s *Server) search(c echo.Context, vals url.Values) error {
	req := c.Request()
	typ, err := resourceType(c)
	if err != nil {
		return err
	}
	if err := negotiate(req, vals["_format"]); err != nil {
		return err
	}
	sr, err := parseSearch(typ, vals, lenient(req))
	if err != nil {
		return err
	}
	ctx := req.Context()
	var page resource.Page
	if !sr.empty {
		if page, err = s.r.Search(ctx, sr.q); err != nil {
			return fmt.Errorf("fhir: search %s: %w", typ, err)
		}
	}
	var included []resource.Version
	if len(sr.includes) > 0 && len(page.Versions) > 0 {
		if included, err = s.include(ctx, typ, sr.includes, page.Versions); err != nil {
			return err
		}
	}
	base := s.baseURL(c)
	selfQ := maps.Clone(sr.link)
	if sr.cursor != "" {
		selfQ.Set("_cursor", sr.cursor)
	}
	self := base + "/" + typ + "?" + selfQ.Encode()
	next := ""
	if page.Next != nil && sr.q.Count > 0 {
		nextQ := maps.Clone(sr.link)
		nextQ.Set("_cursor", encodeCursor(sr.q, *page.Next))
		next = base + "/" + typ + "?" + nextQ.Encode()
	}
	b, err := searchBundle(base, max(page.Total, 0), page.Versions, included, self, next, s.now())
	if err != nil {
		return fmt.Errorf("fhir: search %s: %w", typ, err)
	}
	return c.Blob(http.StatusOK, contentType, b)
}

// include reads the resources the matches reference through each _include
// parameter, each once and none that is already a match.
func (s *Server) include(ctx context.Context, typ string, params []string, matches []resource.Version) ([]resource.Version, error) {
	ids := make([]string, len(matches))
	seen := make(map[resource.Key]bool, len(matches))
	for i, v := range matches {
		ids[i] = v.ID
		seen[resource.Key{Type: v.Type, ID: v.ID}] = true
	}
	var out []resource.Version
	for _, p := range params {
		vs, err := s.r.Include(ctx, typ, ids, p)
		if err != nil {
			return nil, fmt.Errorf("fhir: search %s: _include %s: %w", typ, p, err)
		}
		for _, v := range vs {
			k := resource.Key{Type: v.Type, ID: v.ID}
			if !seen[k] {
				seen[k] = true
				out = append(out, v)
			}
		}
	}
	return out, nil
}

// resultParams are the parameters that shape the result rather than filter it.
var resultParams = map[string]bool{
	"_count": true, "_sort": true, "_summary": true, "_include": true,
	"_format": true, "_pretty": true, "_cursor": true,
}

// parseSearch validates the parameters of a search of typ and builds the
// query. Every problem is reported at once. Unknown parameters are errors
// unless lenient (Prefer: handling=lenient), when they are ignored. Repeated
// parameters are ANDed; comma-separated values are ORed. Error messages name
// parameters, never echo values (they may be identifiers).
func parseSearch(typ string, vals url.Values, lenient bool) (searchRequest, error) {
	sr := searchRequest{
		q:    resource.Query{Type: typ, Sort: resource.SortID, Count: defaultCount},
		link: url.Values{},
	}
	var p problems
	var ids map[string]bool // nil: no _id filter
	summaryCount := false
	for _, key := range slices.Sorted(maps.Keys(vals)) {
		vs := nonEmpty(vals[key])
		if len(vs) == 0 {
			continue // FHIR: a parameter without a value is ignored
		}
		name, mod, hasMod := strings.Cut(key, ":")
		param, isFilter := resource.LookupParam(typ, name)
		known := isFilter || resultParams[name] || name == "_id" || name == "_lastUpdated"
		switch {
		case !known && lenient:
			continue
		case !known:
			p.unsupported(key, fmt.Sprintf("unknown search parameter %q for %s; see /metadata (or send Prefer: handling=lenient to ignore it)", name, typ))
			continue
		case hasMod:
			p.unsupported(key, fmt.Sprintf("the search modifier %q is not supported", ":"+mod))
			continue
		}
		once := func() bool {
			if len(vs) > 1 {
				p.invalid(key, key+" may be given only once")
				return false
			}
			return true
		}
		switch name {
		case "_format":
			// Negotiated before parsing; not part of the links.
		case "_pretty":
			for _, v := range vs {
				if v != "true" && v != "false" {
					p.invalid(key, "_pretty must be true or false")
				}
			}
		case "_count":
			if !once() {
				continue
			}
			n, err := strconv.Atoi(vs[0])
			if err != nil || n < 0 {
				p.invalid(key, "_count must be a non-negative integer")
				continue
			}
			sr.q.Count = min(n, maxCount)
		case "_sort":
			if !once() {
				continue
			}
			field, desc, msg := parseSort(typ, vs[0])
			if msg != "" {
				p.unsupported(key, msg)
				continue
			}
			sr.q.Sort, sr.q.Desc = field, desc
			sr.link.Set(key, vs[0])
		case "_summary":
			if !once() {
				continue
			}
			switch vs[0] {
			case "count":
				summaryCount = true
			case "false":
			default:
				p.unsupported(key, "only _summary=count and _summary=false are supported")
				continue
			}
			sr.link.Set(key, vs[0])
		case "_include":
			for _, v := range vs {
				ip, msg := parseInclude(typ, v)
				if msg != "" {
					p.unsupported(key, msg)
					continue
				}
				if !slices.Contains(sr.includes, ip) {
					sr.includes = append(sr.includes, ip)
				}
				sr.link.Add(key, v)
			}
		case "_cursor":
			if once() {
				sr.cursor = vs[0]
			}
		case "_id":
			for _, v := range vs {
				set := map[string]bool{}
				for _, part := range splitEscaped(v, ',') {
					id := unescape(part)
					if !resource.ValidID(id) {
						p.invalid(key, "_id values are resource ids: 1 to 64 letters, digits, '-' or '.'")
						continue
					}
					set[id] = true
				}
				if ids == nil {
					ids = set
				} else {
					maps.DeleteFunc(ids, func(id string, _ bool) bool { return !set[id] })
				}
				sr.link.Add(key, v)
			}
		case "_lastUpdated":
			for _, v := range vs {
				if f, ok := parseDateFilter(&p, key, name, v); ok {
					sr.q.Dates = append(sr.q.Dates, f)
					sr.link.Add(key, v)
				}
			}
		default:
			for _, v := range vs {
				if addFilter(&p, &sr.q, key, param, v) {
					sr.link.Add(key, v)
				}
			}
		}
	}
	if sr.cursor != "" {
		c, err := decodeCursor(sr.cursor, sr.q)
		if err != nil {
			p.invalid("_cursor", "the _cursor is not valid for this search; follow the next link as given")
		} else {
			sr.q.After = &c
		}
	}
	if err := p.err(); err != nil {
		return searchRequest{}, err
	}
	if summaryCount {
		sr.q.Count = 0
	} else {
		sr.link.Set("_count", strconv.Itoa(sr.q.Count))
	}
	if ids != nil {
		sr.q.IDs = slices.Sorted(maps.Keys(ids))
		sr.empty = len(ids) == 0
	}
	return sr, nil
}

// addFilter parses one value of a registered search parameter into q.
func addFilter(p *problems, q *resource.Query, key string, param resource.Param, v string) bool {
	switch param.Type {
	case resource.TypeToken:
		f := resource.TokenFilter{Param: param.Name}
		for _, part := range splitEscaped(v, ',') {
			tv, ok := parseToken(part)
			if !ok {
				p.invalid(key, key+" values are [system]|[code] or code")
				return false
			}
			f.Values = append(f.Values, tv)
		}
		q.Tokens = append(q.Tokens, f)
	case resource.TypeReference:
		f := resource.RefFilter{Param: param.Name}
		for _, part := range splitEscaped(v, ',') {
			target, msg := parseReference(param, unescape(part))
			if msg != "" {
				p.invalid(key, msg)
				return false
			}
			f.Targets = append(f.Targets, target)
		}
		q.Refs = append(q.Refs, f)
	case resource.TypeDate:
		f, ok := parseDateFilter(p, key, param.Name, v)
		if !ok {
			return false
		}
		q.Dates = append(q.Dates, f)
	default:
		p.unsupported(key, "search parameters of type "+string(param.Type)+" are not supported")
		return false
	}
	return true
}

// parseToken parses [system]|[code] or code (one alternative, still escaped).
func parseToken(s string) (resource.TokenValue, bool) {
	parts := splitEscaped(s, '|')
	switch len(parts) {
	case 1:
		code := unescape(parts[0])
		return resource.TokenValue{AnySystem: true, Code: code}, code != ""
	case 2:
		tv := resource.TokenValue{System: unescape(parts[0]), Code: unescape(parts[1])}
		return tv, tv.System != "" || tv.Code != ""
	}
	return resource.TokenValue{}, false
}

// parseReference turns "123", "Patient/123" or an absolute URL ending in
// Patient/123 into the relative reference "Patient/123". A non-empty message
// says what is wrong.
func parseReference(param resource.Param, v string) (string, string) {
	var typ, id string
	switch {
	case strings.Contains(v, "://"):
		if i := strings.IndexByte(v, '|'); i >= 0 {
			v = v[:i] // a canonical's |version
		}
		u, err := url.Parse(v)
		if err != nil {
			return "", param.Name + " is not a valid URL"
		}
		segs := strings.Split(strings.Trim(u.Path, "/"), "/")
		if slices.Contains(segs, "_history") {
			return "", param.Name + ": versioned references are not supported"
		}
		if len(segs) < 2 {
			return "", param.Name + ": the URL must end in Type/id"
		}
		typ, id = segs[len(segs)-2], segs[len(segs)-1]
	case strings.Contains(v, "/"):
		var rest string
		typ, rest, _ = strings.Cut(v, "/")
		if strings.Contains(rest, "/") {
			return "", param.Name + " values are id, Type/id or an absolute URL ending in Type/id"
		}
		id = rest
	default:
		if len(param.Targets) != 1 {
			return "", param.Name + " refers to more than one type; give Type/id"
		}
		typ, id = param.Targets[0], v
	}
	if !slices.Contains(param.Targets, typ) {
		return "", param.Name + " refers to " + strings.Join(param.Targets, ", ") + " only"
	}
	if !resource.ValidID(id) {
		return "", param.Name + ": the id is not a valid resource id"
	}
	return typ + "/" + id, ""
}

// parseSort parses a _sort value. A non-empty message says what is wrong.
func parseSort(typ, v string) (resource.SortField, bool, string) {
	if strings.Contains(v, ",") {
		return "", false, "sorting by more than one field is not supported"
	}
	desc := strings.HasPrefix(v, "-")
	switch strings.TrimPrefix(v, "-") {
	case "_id":
		return resource.SortID, desc, ""
	case "_lastUpdated":
		return resource.SortLastUpdated, desc, ""
	case "date":
		if p, ok := resource.LookupParam(typ, "date"); ok && p.Type == resource.TypeDate {
			return resource.SortDate, desc, ""
		}
	}
	return "", false, "_sort supports " + strings.Join(sortFields(typ), ", ") + " (prefix - for descending)"
}

// sortFields are the _sort values typ supports.
func sortFields(typ string) []string {
	fs := []string{"_id", "_lastUpdated"}
	if p, ok := resource.LookupParam(typ, "date"); ok && p.Type == resource.TypeDate {
		fs = append(fs, "date")
	}
	return fs
}

// parseInclude parses Type:param[:targetType] and returns param. A non-empty
// message says what is wrong.
func parseInclude(typ, v string) (string, string) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 || len(parts) > 3 || !slices.Contains(resource.Includes[typ], parts[0]+":"+parts[1]) {
		return "", "_include supports " + listOrNone(resource.Includes[typ]) + " for " + typ
	}
	if len(parts) == 3 {
		p, _ := resource.LookupParam(typ, parts[1])
		if !slices.Contains(p.Targets, parts[2]) {
			return "", "_include " + parts[0] + ":" + parts[1] + " refers to " + strings.Join(p.Targets, ", ") + " only"
		}
	}
	return parts[1], ""
}

func listOrNone(vs []string) string {
	if len(vs) == 0 {
		return "nothing"
	}
	return strings.Join(vs, ", ")
}

// parseDateFilter parses [prefix]date for the date parameter name.
func parseDateFilter(p *problems, key, name, v string) (resource.DateFilter, bool) {
	if strings.Contains(v, ",") {
		p.unsupported(key, "comma-separated (OR) date values are not supported; repeat the parameter to AND")
		return resource.DateFilter{}, false
	}
	f := resource.DateFilter{Param: name, Prefix: resource.EQ}
	if len(v) >= 2 && isLower(v[0]) && isLower(v[1]) {
		switch pr := resource.Prefix(v[:2]); pr {
		case resource.EQ, resource.NE, resource.LT, resource.LE, resource.GT, resource.GE:
			f.Prefix = pr
		case "sa", "eb", "ap":
			p.unsupported(key, "the date prefix "+string(pr)+" is not supported; use eq, ne, lt, le, gt or ge")
			return resource.DateFilter{}, false
		default:
			p.invalid(key, "unknown date prefix; use eq, ne, lt, le, gt or ge")
			return resource.DateFilter{}, false
		}
		v = v[2:]
	}
	lo, hi, ok := parseDateRange(v)
	if !ok {
		p.invalid(key, "dates are YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)")
		return resource.DateFilter{}, false
	}
	f.Lo, f.Hi = lo, hi
	return f, true
}

func isLower(c byte) bool { return 'a' <= c && c <= 'z' }

// parseDateRange returns the range [lo, hi) a date covers at its precision:
// 2026 is the whole year. Dates without a time are taken in UTC.
func parseDateRange(v string) (lo, hi time.Time, ok bool) {
	var err error
	switch {
	case len(v) == 4:
		lo, err = time.Parse("2006", v)
		hi = lo.AddDate(1, 0, 0)
	case len(v) == 7:
		lo, err = time.Parse("2006-01", v)
		hi = lo.AddDate(0, 1, 0)
	case len(v) == 10:
		lo, err = time.Parse("2006-01-02", v)
		hi = lo.AddDate(0, 0, 1)
	case len(v) >= 20 && v[10] == 'T':
		lo, err = time.Parse(time.RFC3339, v)
		prec := time.Second
		if i := strings.IndexByte(v, '.'); i > 0 {
			n := 0
			for j := i + 1; j < len(v) && '0' <= v[j] && v[j] <= '9'; j++ {
				n++
			}
			for range min(n, 6) {
				prec /= 10
			}
		}
		hi = lo.Add(prec)
	default:
		return time.Time{}, time.Time{}, false
	}
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	return lo.UTC(), hi.UTC(), true
}

// nonEmpty drops empty values.
func nonEmpty(vs []string) []string {
	out := vs[:0:0]
	for _, v := range vs {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// splitEscaped splits s at each sep not escaped by a backslash, keeping the
// escapes (FHIR search escaping: \, \| \$ \\).
func splitEscaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// unescape removes FHIR search escapes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cursorVersion prefixes the cursor encoding so it can change later.
const cursorVersion = "1"

// encodeCursor encodes a keyset position, bound to the sort of q, as an
// opaque base64url token.
func encodeCursor(q resource.Query, c resource.Cursor) string {
	dir := "a"
	if q.Desc {
		dir = "d"
	}
	raw := strings.Join([]string{cursorVersion, string(q.Sort), dir, c.Time.UTC().Format(time.RFC3339Nano), c.ID}, "|")
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// decodeCursor decodes a cursor made by encodeCursor for a query with the
// same sort as q.
func decodeCursor(s string, q resource.Query) (resource.Cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return resource.Cursor{}, fmt.Errorf("cursor: %w", err)
	}
	parts := strings.Split(string(raw), "|")
	if len(parts) != 5 || parts[0] != cursorVersion {
		return resource.Cursor{}, fmt.Errorf("cursor: unknown format")
	}
	dir := "a"
	if q.Desc {
		dir = "d"
	}
	if parts[1] != string(q.Sort) || parts[2] != dir {
		return resource.Cursor{}, fmt.Errorf("cursor: made for another sort")
	}
	t, err := time.Parse(time.RFC3339Nano, parts[3])
	if err != nil {
		return resource.Cursor{}, fmt.Errorf("cursor: %w", err)
	}
	if !resource.ValidID(parts[4]) {
		return resource.Cursor{}, fmt.Errorf("cursor: bad id")
	}
	return resource.Cursor{Time: t.UTC(), ID: parts[4]}, nil
}
