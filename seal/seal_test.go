package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustBox(t *testing.T, current []byte, old ...[]byte) *Box {
	t.Helper()
	b, err := NewWithOld(current, old...)
	if err != nil {
		t.Fatalf("NewWithOld: %v", err)
	}
	return b
}

func TestSealOpenRoundTrip(t *testing.T) {
	b := mustBox(t, key(1))
	for _, pt := range [][]byte{nil, {}, []byte("s3cret"), bytes.Repeat([]byte{0, 0xff}, 5000)} {
		sealed, err := b.Seal(pt, []byte("endpoint/e1/clientSecret"))
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if !IsSealed(sealed) {
			t.Errorf("IsSealed(%q) = false", sealed)
		}
		if bytes.Contains(sealed, []byte("s3cret")) {
			t.Errorf("sealed value %q contains the plaintext", sealed)
		}
		want := "kseal1:" + KeyID(key(1)) + ":"
		if !strings.HasPrefix(string(sealed), want) {
			t.Errorf("sealed = %q, want prefix %q", sealed, want)
		}
		got, err := b.Open(sealed, []byte("endpoint/e1/clientSecret"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if diff := cmp.Diff(string(pt), string(got)); diff != "" {
			t.Errorf("Open(Seal(x)) (-want +got):\n%s", diff)
		}
	}
}

func TestSealIsText(t *testing.T) {
	b := mustBox(t, key(1))
	sealed, err := b.Seal([]byte{0, 1, 2, 0xff, '\n'}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range sealed {
		if c < 0x21 || c > 0x7e {
			t.Fatalf("sealed value %q has byte %#x; want printable ASCII only", sealed, c)
		}
	}
}

func TestSealUsesFreshNonces(t *testing.T) {
	b := mustBox(t, key(1))
	x, _ := b.Seal([]byte("same"), nil)
	y, _ := b.Seal([]byte("same"), nil)
	if bytes.Equal(x, y) {
		t.Errorf("two seals of the same plaintext are equal (%q): nonce reused", x)
	}
}

func TestOpenRefuses(t *testing.T) {
	b := mustBox(t, key(1))
	ad := []byte("endpoint/e1/token")
	sealed, err := b.Seal([]byte("token-value"), ad)
	if err != nil {
		t.Fatal(err)
	}
	other, err := mustBox(t, key(2)).Seal([]byte("token-value"), ad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		// Change one base64 character into another valid one.
		if c[i] == 'A' {
			c[i] = 'B'
		} else {
			c[i] = 'A'
		}
		return c
	}
	swappedID := bytes.Clone(sealed)
	copy(swappedID[len(prefix):], KeyID(key(2)))
	tests := []struct {
		name    string
		sealed  []byte
		ad      []byte
		want    error
		wantMsg string
	}{
		{"ciphertext byte changed", flip(len(sealed) - 10), ad, ErrTampered, "authentication failed"},
		{"nonce byte changed", flip(headerLen + 1), ad, ErrTampered, "authentication failed"},
		{"truncated", sealed[:len(sealed)-4], ad, ErrTampered, ""},
		{"wrong associated data", sealed, []byte("endpoint/e2/token"), ErrTampered, "wrong associated data"},
		{"no associated data", sealed, nil, ErrTampered, ""},
		{"wrong key", other, ad, ErrUnknownKey, "sealed under key " + KeyID(key(2)) + "; this process has key " + KeyID(key(1)) + " and no old keys"},
		{"key id swapped", swappedID, ad, ErrUnknownKey, KeyID(key(2))},
		{"plaintext", []byte("token-value"), ad, ErrNotSealed, ""},
		{"empty", nil, ad, ErrNotSealed, ""},
		{"other version", append([]byte("kseal2:"), sealed[len(prefix):]...), ad, ErrNotSealed, ""},
		{"uppercase key id", []byte(strings.ToUpper(string(sealed[:headerLen])) + string(sealed[headerLen:])), ad, ErrNotSealed, ""},
		{"payload not base64url", append(bytes.Clone(sealed[:headerLen]), "++++////++++////++++////++++////++++////"...), ad, ErrNotSealed, ""},
		{"payload too short", append(bytes.Clone(sealed[:headerLen]), "AAAA"...), ad, ErrNotSealed, ""},
		{"trailing newline", append(bytes.Clone(sealed), '\n'), ad, ErrNotSealed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.Open(tt.sealed, tt.ad)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open = %q, %v; want error %v", got, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if strings.Contains(err.Error(), "token-value") {
				t.Errorf("error %q contains the plaintext", err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	k1, k2, k3 := key(1), key(2), key(3)
	old := mustBox(t, k1)
	sealedOld, err := old.Seal([]byte("secret"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	rotated := mustBox(t, k2, k1, k2) // the current key among the old ones is ignored
	if got, want := rotated.KeyID(), KeyID(k2); got != want {
		t.Errorf("KeyID = %s, want %s", got, want)
	}
	pt, err := rotated.Open(sealedOld, []byte("ad"))
	if err != nil || string(pt) != "secret" {
		t.Fatalf("Open(old value) = %q, %v; want secret", pt, err)
	}
	if !rotated.NeedsRotation(sealedOld) {
		t.Errorf("NeedsRotation(old value) = false, want true")
	}
	sealedNew, err := rotated.Seal(pt, []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(sealedNew), prefix+KeyID(k2)+":") {
		t.Errorf("Seal after rotation = %q, want it under the current key %s", sealedNew, KeyID(k2))
	}
	if rotated.NeedsRotation(sealedNew) {
		t.Errorf("NeedsRotation(new value) = true, want false")
	}
	if rotated.NeedsRotation([]byte("plain")) {
		t.Errorf("NeedsRotation(plaintext) = true, want false")
	}
	// The old key alone cannot open what was sealed under the new one.
	if _, err := old.Open(sealedNew, []byte("ad")); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old box Open(new value) error = %v, want ErrUnknownKey", err)
	}
	// Once k1 is dropped, its values no longer open, and the error names the keys held.
	_, err = mustBox(t, k3, k2).Open(sealedOld, []byte("ad"))
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "old keys "+KeyID(k2)) {
		t.Errorf("Open after dropping the key = %v, want ErrUnknownKey naming old key %s", err, KeyID(k2))
	}
}

func TestNewRefusesBadKeys(t *testing.T) {
	tests := []struct {
		name    string
		current []byte
		old     [][]byte
		want    string
	}{
		{"short", make([]byte, 16), nil, "current key: the key is 16 bytes; want 32"},
		{"long", make([]byte, 33), nil, "the key is 33 bytes"},
		{"nil", nil, nil, "the key is 0 bytes"},
		{"all zero", make([]byte, 32), nil, "all zero"},
		{"bad old key", key(1), [][]byte{key(2), []byte("short")}, "old key 2: the key is 5 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewWithOld(tt.current, tt.old...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewWithOld error = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestGenerateKey(t *testing.T) {
	k1, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize || bytes.Equal(k1, k2) {
		t.Fatalf("GenerateKey = %d bytes, equal twice: %v; want 32 random bytes", len(k1), bytes.Equal(k1, k2))
	}
	got, err := KeyFromEnvOrFile(env(map[string]string{"K": EncodeKey(k1)}), "K", "")
	if err != nil || !bytes.Equal(got, k1) {
		t.Errorf("KeyFromEnvOrFile(EncodeKey(k)) = %x, %v; want k", got, err)
	}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "seal.key")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod after writing: the umask does not apply to it.
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeyFromEnvOrFile(t *testing.T) {
	k := key(7)
	k[0] = 0xfb // makes the standard and URL alphabets differ
	k[1] = 0xff
	std := base64.StdEncoding.EncodeToString(k)
	rawURL := base64.RawURLEncoding.EncodeToString(k)
	if std == rawURL+"=" {
		t.Fatal("test key does not tell the alphabets apart")
	}
	tests := []struct {
		name    string
		env     map[string]string
		file    func(t *testing.T) string
		want    []byte
		wantErr string
	}{
		{name: "env std base64", env: map[string]string{"KEY": std}, want: k},
		{name: "env raw url base64", env: map[string]string{"KEY": rawURL}, want: k},
		{name: "env with spaces", env: map[string]string{"KEY": " " + std + "\n"}, want: k},
		{name: "file", file: func(t *testing.T) string { return writeFile(t, std+"\n", 0o600) }, want: k},
		{name: "file owner read-only", file: func(t *testing.T) string { return writeFile(t, rawURL, 0o400) }, want: k},
		{name: "empty env falls to file", env: map[string]string{"KEY": ""}, file: func(t *testing.T) string { return writeFile(t, std, 0o600) }, want: k},
		{name: "file group readable", file: func(t *testing.T) string { return writeFile(t, std, 0o640) }, wantErr: "has mode 0640; it must not be accessible to group or others (chmod 600)"},
		{name: "file world readable", file: func(t *testing.T) string { return writeFile(t, std, 0o604) }, wantErr: "has mode 0604"},
		{name: "file group writable", file: func(t *testing.T) string { return writeFile(t, std, 0o620) }, wantErr: "has mode 0620"},
		{name: "file missing", file: func(t *testing.T) string { return filepath.Join(t.TempDir(), "none") }, wantErr: "no such file"},
		{name: "file is a directory", file: func(t *testing.T) string { return t.TempDir() }, wantErr: "not a regular file"},
		{name: "file empty", file: func(t *testing.T) string { return writeFile(t, "", 0o600) }, wantErr: "the key is 0 bytes"},
		{name: "file too large", file: func(t *testing.T) string { return writeFile(t, strings.Repeat("A", 5000), 0o600) }, wantErr: "larger than 4096 bytes"},
		{name: "env not base64", env: map[string]string{"KEY": "not base64!"}, wantErr: "seal: key from KEY: the key is not base64"},
		{name: "env short key", env: map[string]string{"KEY": base64.StdEncoding.EncodeToString(make([]byte, 16))}, wantErr: "the key is 16 bytes; want 32"},
		{name: "both", env: map[string]string{"KEY": std}, file: func(t *testing.T) string { return writeFile(t, std, 0o600) }, wantErr: "both KEY and the key file"},
		{name: "neither", wantErr: "set KEY or give a key file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != nil {
				path = tt.file(t)
			}
			got, err := KeyFromEnvOrFile(env(tt.env), "KEY", path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("KeyFromEnvOrFile = %x, %v; want error saying %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), std) || strings.Contains(err.Error(), rawURL) {
					t.Errorf("error %q contains the key", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("KeyFromEnvOrFile: %v", err)
			}
			if diff := cmp.Diff(k, got); diff != "" {
				t.Errorf("key (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKeyFromEnvOrFileNilLookup(t *testing.T) {
	p := writeFile(t, EncodeKey(key(9)), 0o600)
	got, err := KeyFromEnvOrFile(nil, "KEY", p)
	if err != nil || !bytes.Equal(got, key(9)) {
		t.Errorf("KeyFromEnvOrFile(nil lookup) = %x, %v; want the file's key", got, err)
	}
}

func TestIsSealed(t *testing.T) {
	b := mustBox(t, key(1))
	sealed, _ := b.Seal([]byte("x"), nil)
	tests := []struct {
		in   string
		want bool
	}{
		{string(sealed), true},
		{"", false},
		{"kseal1:", false},
		{"kseal1:0123456789abcdef:", false},
		{"kseal1:0123456789abcdef:" + strings.Repeat("A", 38), true},
		{"kseal1:0123456789abcdeg:" + strings.Repeat("A", 38), false},
		{"kseal1:0123456789abcdef:" + strings.Repeat("A", 37) + "=", false},
		{"plain secret", false},
	}
	for _, tt := range tests {
		if got := IsSealed([]byte(tt.in)); got != tt.want {
			t.Errorf("IsSealed(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLoadOrCreateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seal.key")
	k1, created, err := LoadOrCreateKeyFile(path)
	if err != nil || !created || len(k1) != KeySize {
		t.Fatalf("first call = %d bytes, created %v, %v; want a new 32-byte key", len(k1), created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %#o, want 0600", perm)
	}
	k2, created, err := LoadOrCreateKeyFile(path)
	if err != nil || created || !bytes.Equal(k1, k2) {
		t.Errorf("second call = created %v, same key %v, %v; want the first key read back", created, bytes.Equal(k1, k2), err)
	}
	if got, err := KeyFromEnvOrFile(nil, "", path); err != nil || !bytes.Equal(got, k1) {
		t.Errorf("KeyFromEnvOrFile(the created file) = %v; want the same key", err)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil || len(entries) != 1 {
		t.Errorf("directory holds %d entries (%v), want only the key file", len(entries), err)
	}

	t.Run("refuses a file others can read", func(t *testing.T) {
		p := writeFile(t, EncodeKey(key(3)), 0o644)
		if _, _, err := LoadOrCreateKeyFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("err = %v, want the mode refused", err)
		}
	})
	t.Run("refuses a bad key rather than replacing it", func(t *testing.T) {
		p := writeFile(t, "not a key", 0o600)
		if _, _, err := LoadOrCreateKeyFile(p); err == nil || !strings.Contains(err.Error(), "not base64") {
			t.Errorf("err = %v, want the content refused", err)
		}
		if b, _ := os.ReadFile(p); string(b) != "not a key" {
			t.Errorf("the file was replaced: %q", b)
		}
	})
}
