// Package seal encrypts secrets at rest (EHR client secrets, private keys,
// tokens kept in the store) with AES-256-GCM.
//
// A sealed value is text, so it fits a TEXT column:
//
//	kseal1:<key id>:<base64url(nonce || ciphertext || tag)>
//
// The key id is the first 8 bytes of SHA-256 of the key, in hex; it names the
// key without revealing it, so a value sealed under another key is reported
// as such instead of as tampering. The version prefix and key id are
// authenticated together with the caller's associated data (bind a secret to
// its row, e.g. "endpoint/<id>/clientSecret", so that it cannot be copied to
// another row).
//
// Keys rotate with NewWithOld: values sealed under an old key still open, and
// Seal always uses the current key; NeedsRotation tells which values to
// re-seal.
package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// KeySize is the size of a key in bytes (AES-256).
const KeySize = 32

// prefix starts every sealed value; the digit is the format version.
const prefix = "kseal1:"

const (
	keyIDLen  = 16                                // hex characters
	headerLen = len(prefix) + keyIDLen + len(":") // "kseal1:<key id>:"
	nonceLen  = 12                                // the standard GCM nonce
	tagLen    = 16                                // the GCM tag
)

// The errors Open returns, for errors.Is. Their messages never include the
// data or a key.
var (
	// ErrNotSealed: the data is not in the sealed format.
	ErrNotSealed = errors.New("not sealed data")
	// ErrUnknownKey: the data was sealed under a key the Box does not hold.
	ErrUnknownKey = errors.New("sealed under an unknown key")
	// ErrTampered: authentication failed: the data was changed, or the
	// associated data differs from the one it was sealed with.
	ErrTampered = errors.New("authentication failed (data changed or wrong associated data)")
)

// Box seals under its current key and opens under its current or old keys.
// It is safe for concurrent use.
type Box struct {
	currentID string
	current   cipher.AEAD
	keys      map[string]cipher.AEAD // by key id, current included
	rand      io.Reader
}

// New returns a Box with one 32-byte key.
func New(key []byte) (*Box, error) {
	return NewWithOld(key)
}

// NewWithOld returns a Box that seals under current and opens values sealed
// under current or any of old (for key rotation). Every key is 32 bytes.
func NewWithOld(current []byte, old ...[]byte) (*Box, error) {
	id, aead, err := newAEAD(current)
	if err != nil {
		return nil, fmt.Errorf("seal: current key: %w", err)
	}
	b := &Box{currentID: id, current: aead, keys: map[string]cipher.AEAD{id: aead}, rand: rand.Reader}
	for i, k := range old {
		oid, oaead, err := newAEAD(k)
		if err != nil {
			return nil, fmt.Errorf("seal: old key %d: %w", i+1, err)
		}
		if _, dup := b.keys[oid]; dup {
			continue // the same key given twice (or the current key among the old ones)
		}
		b.keys[oid] = oaead
	}
	return b, nil
}

func newAEAD(key []byte) (string, cipher.AEAD, error) {
	if len(key) != KeySize {
		return "", nil, fmt.Errorf("the key is %d bytes; want %d", len(key), KeySize)
	}
	if subtle.ConstantTimeCompare(key, make([]byte, KeySize)) == 1 {
		return "", nil, errors.New("the key is all zero bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return "", nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return "", nil, err
	}
	return KeyID(key), aead, nil
}

// KeyID names a key without revealing it: the first 8 bytes of its SHA-256,
// in hex.
func KeyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:keyIDLen/2])
}

// KeyID is the id of the current key.
func (b *Box) KeyID() string { return b.currentID }

// GenerateKey returns a new random 32-byte key.
func GenerateKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("seal: generate key: %w", err)
	}
	return key, nil
}

// EncodeKey writes a key as standard base64, the form KeyFromEnvOrFile reads.
func EncodeKey(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

// Seal encrypts plaintext under the current key, authenticating
// associatedData with it; the same associatedData must be given to Open.
func (b *Box) Seal(plaintext, associatedData []byte) ([]byte, error) {
	nonce := make([]byte, nonceLen, nonceLen+len(plaintext)+tagLen)
	if _, err := io.ReadFull(b.rand, nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	header := prefix + b.currentID + ":"
	raw := b.current.Seal(nonce, nonce, plaintext, aad(header, associatedData))
	out := make([]byte, headerLen+base64.RawURLEncoding.EncodedLen(len(raw)))
	copy(out, header)
	base64.RawURLEncoding.Encode(out[headerLen:], raw)
	return out, nil
}

// Open decrypts a value made by Seal under any key the Box holds.
func (b *Box) Open(sealed, associatedData []byte) ([]byte, error) {
	id, body, err := split(sealed)
	if err != nil {
		return nil, fmt.Errorf("seal: open: %w", err)
	}
	aead, ok := b.keys[id]
	if !ok {
		return nil, fmt.Errorf("seal: open: %w: the data is sealed under key %s; this process has key %s%s", ErrUnknownKey, id, b.currentID, b.oldIDs())
	}
	raw := make([]byte, base64.RawURLEncoding.DecodedLen(len(body)))
	n, err := base64.RawURLEncoding.Decode(raw, body)
	if err != nil || n < nonceLen+tagLen {
		return nil, fmt.Errorf("seal: open: %w: the payload is not base64url of a nonce and a tag", ErrNotSealed)
	}
	raw = raw[:n]
	pt, err := aead.Open(nil, raw[:nonceLen], raw[nonceLen:], aad(string(sealed[:headerLen]), associatedData))
	if err != nil {
		return nil, fmt.Errorf("seal: open (key %s): %w", id, ErrTampered)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// NeedsRotation reports whether sealed is a sealed value under a key other
// than the current one (so it should be opened and sealed again).
func (b *Box) NeedsRotation(sealed []byte) bool {
	id, _, err := split(sealed)
	return err == nil && id != b.currentID
}

// IsSealed reports whether data has the sealed format (it does not check that
// it opens). Stores use it to tell sealed values from plaintext ones written
// before sealing was enabled.
func IsSealed(data []byte) bool {
	_, _, err := split(data)
	return err == nil
}

func (b *Box) oldIDs() string {
	if len(b.keys) == 1 {
		return " and no old keys"
	}
	var ids []string
	for id := range b.keys {
		if id != b.currentID {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return " and old keys " + strings.Join(ids, ", ")
}

// split checks the header of a sealed value and returns its key id and its
// base64 payload.
func split(sealed []byte) (id string, body []byte, err error) {
	if len(sealed) < headerLen || !bytes.HasPrefix(sealed, []byte(prefix)) || sealed[headerLen-1] != ':' {
		return "", nil, ErrNotSealed
	}
	rawID := sealed[len(prefix) : headerLen-1]
	for _, c := range rawID {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", nil, ErrNotSealed
		}
	}
	body = sealed[headerLen:]
	if base64.RawURLEncoding.DecodedLen(len(body)) < nonceLen+tagLen {
		return "", nil, ErrNotSealed
	}
	for _, c := range body {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return "", nil, ErrNotSealed
		}
	}
	return string(rawID), body, nil
}

// aad authenticates the header (format version and key id) with the
// caller's associated data. The header has a fixed length, so the
// concatenation is unambiguous.
func aad(header string, associatedData []byte) []byte {
	out := make([]byte, 0, len(header)+len(associatedData))
	out = append(out, header...)
	return append(out, associatedData...)
}

// KeyFromEnvOrFile reads a 32-byte key written in base64 (standard or URL
// alphabet, padded or not): from the environment variable envName when it is
// set and not empty, else from the file filePath when it is not empty. The
// file must not be readable or writable by group or others (mode & 0o077 ==
// 0). Giving both is an error, so that it is never unclear which key is used.
// Errors name the variable or file, never the key.
func KeyFromEnvOrFile(lookup func(string) (string, bool), envName, filePath string) ([]byte, error) {
	var fromEnv string
	if envName != "" && lookup != nil {
		fromEnv, _ = lookup(envName)
		fromEnv = strings.TrimSpace(fromEnv)
	}
	switch {
	case fromEnv != "" && filePath != "":
		return nil, fmt.Errorf("seal: key: both %s and the key file %s are set; set one", envName, filePath)
	case fromEnv != "":
		key, err := decodeKey(fromEnv)
		if err != nil {
			return nil, fmt.Errorf("seal: key from %s: %w", envName, err)
		}
		return key, nil
	case filePath != "":
		key, err := keyFromFile(filePath)
		if err != nil {
			return nil, fmt.Errorf("seal: key file %s: %w", filePath, err)
		}
		return key, nil
	}
	if envName == "" {
		return nil, errors.New("seal: key: no key file given")
	}
	return nil, fmt.Errorf("seal: key: set %s or give a key file", envName)
}

// maxKeyFile bounds what is read from a key file.
const maxKeyFile = 4096

func keyFromFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("is not a regular file")
	}
	// Windows has no such permission bits; elsewhere a key others can read
	// (or replace) is refused.
	if perm := fi.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return nil, fmt.Errorf("has mode %#o; it must not be accessible to group or others (chmod 600)", perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("is larger than %d bytes; it must hold one base64 key", maxKeyFile)
	}
	return decodeKey(strings.TrimSpace(string(b)))
}

func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != KeySize {
				return nil, fmt.Errorf("the key is %d bytes; want %d (base64 of 32 random bytes, e.g. from `openssl rand -base64 32`)", len(key), KeySize)
			}
			return key, nil
		}
	}
	return nil, errors.New("the key is not base64 (want base64 of 32 random bytes, e.g. from `openssl rand -base64 32`)")
}

// LoadOrCreateKeyFile reads the key in the file at path (as KeyFromEnvOrFile
// does, mode checked) or, when there is no such file, generates a key and
// writes it there with mode 0600; created says which. The file appears
// whole or not at all, and never replaces one that another process created
// meanwhile: that one is read instead.
func LoadOrCreateKeyFile(path string) (key []byte, created bool, err error) {
	key, err = keyFromFile(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("seal: key file %s: %w", path, err)
	}
	if key, err = GenerateKey(); err != nil {
		return nil, false, err
	}
	if err := WriteSecretFile(path, []byte(EncodeKey(key)+"\n")); err != nil {
		if errors.Is(err, os.ErrExist) { // another process created it first
			if key, err = keyFromFile(path); err != nil {
				return nil, false, fmt.Errorf("seal: key file %s: %w", path, err)
			}
			return key, false, nil
		}
		return nil, false, fmt.Errorf("seal: create key file %s: %w", path, err)
	}
	return key, true, nil
}

// WriteSecretFile writes data to a new file at path with mode 0600, whole
// or not at all (a temporary file next to it, synced, then linked to
// path); it fails with os.ErrExist when path exists.
func WriteSecretFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}
