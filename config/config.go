// Package config holds kapfhir's configuration: the struct, loading it from a
// YAML file plus KAPFHIR_* environment overrides, and validation that reports
// every problem at once. Only cmd/kapfhir sees the whole Config.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. Zero values are filled by Defaults.
type Config struct {
	// Listen is the address the HTTP server listens on.
	Listen string `yaml:"listen"`
	// BaseURL is the external base URL clients use (e.g. https://kapfhir.clinic.example);
	// empty means derived from each request.
	BaseURL string `yaml:"baseURL"`
	// DataDir holds the embedded database and kapfhir's own files.
	DataDir string `yaml:"dataDir"`

	Store     Store     `yaml:"store"`
	Clinic    Clinic    `yaml:"clinic"`
	FHIR      FHIR      `yaml:"fhir"`
	Protocols Protocols `yaml:"protocols"`
	HTTP      HTTP      `yaml:"http"`
	Log       Log       `yaml:"log"`
	Sync      Sync      `yaml:"sync"`
	// Endpoints are EHRs to keep in sync (more can be added through the API).
	Endpoints Endpoints `yaml:"endpoints,omitempty"`
	// Auth configures kapfhir's authorization server and its clients.
	Auth Auth `yaml:"auth"`
	// TLS serves HTTPS when a certificate is configured.
	TLS TLS `yaml:"tls"`
	// Outbound configures kapfhir's own connections to EHRs.
	Outbound Outbound `yaml:"outbound"`
	// Secrets configures how secrets kept in the store are encrypted.
	Secrets Secrets `yaml:"secrets"`
	// Audit configures the audit trail.
	Audit Audit `yaml:"audit"`
}

// Sync tunes the sync engine.
type Sync struct {
	// LeaseFor is how long a worker holds a patient's queued items before
	// another process may take them over (after a crash). Keep it well above
	// the endpoints' request timeouts.
	LeaseFor time.Duration `yaml:"leaseFor"`
	// Poll is how often idle workers look for work that came due.
	Poll time.Duration `yaml:"poll"`
}

// Store selects and configures the persistence implementation.
type Store struct {
	// Driver is "sqlite" (embedded default) or "postgres".
	Driver string `yaml:"driver"`
	// SQLitePath defaults to DataDir/kapfhir.db.
	SQLitePath string `yaml:"sqlitePath"`
	// PostgresURL is a pgx connection string. It may hold a password: it is
	// redacted in every dump.
	PostgresURL string `yaml:"postgresURL"`
}

// Clinic is the clinic calendar used for scheduling.
type Clinic struct {
	// Timezone is the IANA zone programmes default to.
	Timezone string `yaml:"timezone"`
	// Hours maps weekday ("mon".."sun") to opening hours "HH:MM-HH:MM".
	// A weekday not listed is closed.
	Hours map[string]string `yaml:"hours"`
	// Closed lists closed dates, YYYY-MM-DD.
	Closed []string `yaml:"closed"`
}

// FHIR configures the FHIR output.
type FHIR struct {
	// IdentifierSystem is the per-installation identifier system every
	// resource carries; empty = "urn:uuid:<installation id>", generated once
	// and kept in the store.
	IdentifierSystem string `yaml:"identifierSystem"`
	// CanonicalBase prefixes kapfhir's canonical URLs (PlanDefinitions, CodeSystems).
	CanonicalBase string `yaml:"canonicalBase"`
}

// Protocols configures the protocol catalogue.
type Protocols struct {
	// Dir holds clinic protocol files that add to or override the built-in ones.
	Dir string `yaml:"dir"`
}

// HTTP configures the server's limits.
type HTTP struct {
	MaxBodyBytes      int64         `yaml:"maxBodyBytes"`
	ReadHeaderTimeout time.Duration `yaml:"readHeaderTimeout"`
	ReadTimeout       time.Duration `yaml:"readTimeout"`
	WriteTimeout      time.Duration `yaml:"writeTimeout"`
	IdleTimeout       time.Duration `yaml:"idleTimeout"`
	ShutdownTimeout   time.Duration `yaml:"shutdownTimeout"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// Defaults returns the configuration used when nothing is configured:
// data in ./kapfhir-data, listening on 127.0.0.1:8080, SQLite.
func Defaults() Config {
	return Config{
		Listen:  "127.0.0.1:8080",
		DataDir: "kapfhir-data",
		Store:   Store{Driver: "sqlite"},
		Clinic: Clinic{
			Timezone: "America/New_York",
			Hours: map[string]string{
				"mon": "08:00-18:00", "tue": "08:00-18:00", "wed": "08:00-18:00",
				"thu": "08:00-18:00", "fri": "08:00-18:00", "sat": "09:00-13:00",
			},
		},
		FHIR: FHIR{CanonicalBase: "https://kapfhir.org/fhir"},
		Sync: Sync{LeaseFor: 2 * time.Minute, Poll: time.Second},
		HTTP: HTTP{
			MaxBodyBytes:      1 << 20,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
			ShutdownTimeout:   15 * time.Second,
		},
		Log:   Log{Level: "info", Format: "text"},
		Audit: Audit{PruneEvery: 24 * time.Hour},
	}
}

// LookupFunc looks up an environment variable (os.LookupEnv in production;
// a map in tests, so they never touch the real environment).
type LookupFunc func(key string) (string, bool)

// Load reads the YAML file at path (none when path is ""), applies KAPFHIR_*
// overrides from lookup, and validates the result. Every problem is reported
// at once.
func Load(path string, lookup LookupFunc) (Config, error) {
	cfg := Defaults()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		if err := decodeYAML(b, &cfg); err != nil {
			return cfg, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	var probs Problems
	applyEnv(&cfg, lookup, &probs)
	applyEndpointEnv(&cfg, lookup)
	probs = append(probs, cfg.Validate()...)
	if len(probs) > 0 {
		return cfg, probs
	}
	return cfg, nil
}

func decodeYAML(b []byte, cfg *Config) error {
	// A map in the file replaces the default map rather than merging into it.
	defHours := cfg.Clinic.Hours
	cfg.Clinic.Hours = nil
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if cfg.Clinic.Hours == nil {
		cfg.Clinic.Hours = defHours
	}
	return nil
}

// env lists the environment overrides: variable -> setter.
var env = []struct {
	key string
	set func(c *Config, v string) error
}{
	{"KAPFHIR_LISTEN", func(c *Config, v string) error { c.Listen = v; return nil }},
	{"KAPFHIR_BASE_URL", func(c *Config, v string) error { c.BaseURL = v; return nil }},
	{"KAPFHIR_DATA_DIR", func(c *Config, v string) error { c.DataDir = v; return nil }},
	{"KAPFHIR_STORE_DRIVER", func(c *Config, v string) error { c.Store.Driver = v; return nil }},
	{"KAPFHIR_SQLITE_PATH", func(c *Config, v string) error { c.Store.SQLitePath = v; return nil }},
	{"KAPFHIR_POSTGRES_URL", func(c *Config, v string) error { c.Store.PostgresURL = v; return nil }},
	{"KAPFHIR_CLINIC_TIMEZONE", func(c *Config, v string) error { c.Clinic.Timezone = v; return nil }},
	{"KAPFHIR_CLINIC_CLOSED", func(c *Config, v string) error { c.Clinic.Closed = splitList(v); return nil }},
	{"KAPFHIR_IDENTIFIER_SYSTEM", func(c *Config, v string) error { c.FHIR.IdentifierSystem = v; return nil }},
	{"KAPFHIR_CANONICAL_BASE", func(c *Config, v string) error { c.FHIR.CanonicalBase = v; return nil }},
	{"KAPFHIR_PROTOCOLS_DIR", func(c *Config, v string) error { c.Protocols.Dir = v; return nil }},
	{"KAPFHIR_MAX_BODY_BYTES", func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return errors.New("must be an integer number of bytes")
		}
		c.HTTP.MaxBodyBytes = n
		return nil
	}},
	{"KAPFHIR_SHUTDOWN_TIMEOUT", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("must be a duration such as 15s")
		}
		c.HTTP.ShutdownTimeout = d
		return nil
	}},
	{"KAPFHIR_SYNC_LEASE_FOR", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("must be a duration such as 2m")
		}
		c.Sync.LeaseFor = d
		return nil
	}},
	{"KAPFHIR_AUDIT_RETENTION", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("must be a duration such as 52560h (6 years), or 0 to keep every record")
		}
		c.Audit.Retention = d
		return nil
	}},
	{"KAPFHIR_LOG_LEVEL", func(c *Config, v string) error { c.Log.Level = v; return nil }},
	{"KAPFHIR_LOG_FORMAT", func(c *Config, v string) error { c.Log.Format = v; return nil }},
	{"KAPFHIR_TLS_CERT_FILE", func(c *Config, v string) error { c.TLS.CertFile = v; return nil }},
	{"KAPFHIR_TLS_KEY_FILE", func(c *Config, v string) error { c.TLS.KeyFile = v; return nil }},
	{"KAPFHIR_OUTBOUND_CA_FILE", func(c *Config, v string) error { c.Outbound.CAFile = v; return nil }},
	{"KAPFHIR_SEAL_KEY_FILE", func(c *Config, v string) error { c.Secrets.KeyFile = v; return nil }},
	{SealKeyEnv, func(c *Config, v string) error { c.Secrets.Key = Secret(strings.TrimSpace(v)); return nil }},
}

// EnvKeys lists the environment variables Load reads, for documentation.
func EnvKeys() []string {
	keys := make([]string, len(env))
	for i, e := range env {
		keys[i] = e.key
	}
	return keys
}

func applyEnv(c *Config, lookup LookupFunc, probs *Problems) {
	if lookup == nil {
		return
	}
	for _, e := range env {
		v, ok := lookup(e.key)
		if !ok {
			continue
		}
		if err := e.set(c, v); err != nil {
			probs.add(e.key, "%s", err.Error())
		}
	}
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Problem is one invalid configuration key.
type Problem struct {
	Key    string
	Reason string
}

// Problems is every problem found; it is the error Load and Validate return.
type Problems []Problem

func (p *Problems) add(key, format string, args ...any) {
	*p = append(*p, Problem{Key: key, Reason: fmt.Sprintf(format, args...)})
}

func (p Problems) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d configuration problem(s):", len(p))
	for _, x := range p {
		fmt.Fprintf(&b, "\n  %s: %s", x.Key, x.Reason)
	}
	return b.String()
}

var (
	hoursRE   = regexp.MustCompile(`^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$`)
	weekdays  = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}
	logLevels = map[string]bool{"debug": true, "info": true, "warn": true, "error": true}
)

// Validate checks every field and returns all problems (nil when valid),
// naming the key and the allowed values.
func (c Config) Validate() Problems {
	var p Problems
	c.Auth.validate(&p)
	if host, port, err := net.SplitHostPort(c.Listen); err != nil {
		p.add("listen", "must be host:port (e.g. 127.0.0.1:8080, :0 for any free port)")
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add("listen", "port must be 0-65535")
	} else {
		_ = host
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			p.add("baseURL", "must be an absolute http(s) URL without query or fragment")
		}
	}
	if c.DataDir == "" {
		p.add("dataDir", "must not be empty")
	}
	switch c.Store.Driver {
	case "sqlite":
	case "postgres":
		if c.Store.PostgresURL == "" {
			p.add("store.postgresURL", "is required when store.driver is postgres")
		}
	default:
		p.add("store.driver", "must be sqlite or postgres")
	}
	if c.Store.PostgresURL != "" {
		if u, err := url.Parse(c.Store.PostgresURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			p.add("store.postgresURL", "must be a postgres:// URL")
		}
	}
	if _, err := time.LoadLocation(c.Clinic.Timezone); err != nil || c.Clinic.Timezone == "" {
		p.add("clinic.timezone", "must be an IANA time zone such as America/New_York")
	}
	if len(c.Clinic.Hours) == 0 {
		p.add("clinic.hours", "must list at least one open weekday")
	}
	for _, day := range sortedKeys(c.Clinic.Hours) {
		key := "clinic.hours." + day
		if _, ok := weekdays[day]; !ok {
			p.add(key, "weekday must be one of mon, tue, wed, thu, fri, sat, sun")
			continue
		}
		if _, err := parseHours(c.Clinic.Hours[day]); err != nil {
			p.add(key, "%s", err.Error())
		}
	}
	for i, d := range c.Clinic.Closed {
		if _, err := time.Parse(time.DateOnly, d); err != nil {
			p.add(fmt.Sprintf("clinic.closed[%d]", i), "must be a date YYYY-MM-DD")
		}
	}
	if c.FHIR.IdentifierSystem != "" && !isAbsoluteURI(c.FHIR.IdentifierSystem) {
		p.add("fhir.identifierSystem", "must be an absolute URI (https://... or urn:...)")
	}
	if u, err := url.Parse(c.FHIR.CanonicalBase); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.HasSuffix(c.FHIR.CanonicalBase, "/") {
		p.add("fhir.canonicalBase", "must be an absolute http(s) URL without a trailing slash")
	}
	if c.HTTP.MaxBodyBytes < 1024 || c.HTTP.MaxBodyBytes > 64<<20 {
		p.add("http.maxBodyBytes", "must be between 1024 and 67108864")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"http.readHeaderTimeout", c.HTTP.ReadHeaderTimeout}, {"http.readTimeout", c.HTTP.ReadTimeout},
		{"http.writeTimeout", c.HTTP.WriteTimeout}, {"http.idleTimeout", c.HTTP.IdleTimeout},
		{"http.shutdownTimeout", c.HTTP.ShutdownTimeout},
	} {
		if d.v < 100*time.Millisecond || d.v > time.Hour {
			p.add(d.key, "must be between 100ms and 1h")
		}
	}
	if !logLevels[c.Log.Level] {
		p.add("log.level", "must be debug, info, warn or error")
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		p.add("log.format", "must be text or json")
	}
	if c.Sync.LeaseFor < time.Second || c.Sync.LeaseFor > time.Hour {
		p.add("sync.leaseFor", "must be between 1s and 1h")
	}
	if c.Sync.Poll < 10*time.Millisecond || c.Sync.Poll > time.Minute {
		p.add("sync.poll", "must be between 10ms and 1m")
	}
	c.validateEndpoints(&p)
	c.TLS.validate(&p)
	c.Outbound.validate(&p)
	c.Secrets.validate(&p)
	c.Audit.validate(&p)
	return p
}

func isAbsoluteURI(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != "" && (u.Opaque != "" || u.Host != "")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// hours is a parsed "HH:MM-HH:MM" in minutes after midnight.
type hours struct{ open, close int }

func parseHours(s string) (hours, error) {
	m := hoursRE.FindStringSubmatch(s)
	if m == nil {
		return hours{}, errors.New(`must be "HH:MM-HH:MM" (24-hour clock)`)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	h := hours{open: atoi(m[1])*60 + atoi(m[2]), close: atoi(m[3])*60 + atoi(m[4])}
	if h.close > 24*60 || h.close <= h.open {
		return hours{}, errors.New("closing time must be after opening time and at most 24:00")
	}
	return h, nil
}

// SQLitePath is the database file: Store.SQLitePath or DataDir/kapfhir.db.
func (c Config) SQLitePath() string {
	if c.Store.SQLitePath != "" {
		return c.Store.SQLitePath
	}
	return filepath.Join(c.DataDir, "kapfhir.db")
}

// Dump renders the configuration as YAML with secrets redacted.
func (c Config) Dump() string {
	c.Store.PostgresURL = redactURL(c.Store.PostgresURL)
	eps := make(Endpoints, len(c.Endpoints))
	for i, e := range c.Endpoints {
		eps[i] = e.Redacted()
	}
	c.Endpoints = eps
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Sprintf("config: %v", err)
	}
	return string(b)
}

func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return "REDACTED"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "REDACTED")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
