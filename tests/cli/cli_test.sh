#!/usr/bin/env bash
# tests/cli/cli_test.sh: end-to-end tests of the `instanttensor` command, one case per ctest test.
#
#   cli_test.sh CASE BIN REFERENCE FIXTURES WORK VERSION
#
# BIN is build/bin/instanttensor, REFERENCE the hash_reference helper, FIXTURES tests/fixtures,
# WORK a scratch directory (emptied first), VERSION the project version. Exit 0 pass, 1 fail,
# 77 skipped (a tool the case needs is missing).
set -uo pipefail

case_name=$1 bin=$2 reference=$3 fixtures=$4 work=$5 version=$6
rm -rf "$work" && mkdir -p "$work" || exit 1
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# run ARGS...: runs the command with a time limit; sets rc, and leaves stdout/stderr in files.
run() {
    timeout 60 "$bin" "$@" >"$work/stdout" 2>"$work/stderr"
    rc=$?
    cat "$work/stdout" "$work/stderr" >>"$work/transcript"  # everything printed, for checks such as no secret shown
}

# expect_failure NEEDLE ARGS...: exit 1, nothing on stdout, exactly one line on stderr, which
# starts with "instanttensor: " and contains NEEDLE (the path at fault).
expect_failure() {
    local needle=$1
    shift
    run "$@"
    local what="instanttensor $*"
    [[ $rc == 124 ]] && { fail "$what: timed out"; return; }
    [[ $rc == 1 ]] || fail "$what: exit status $rc, expected 1"
    [[ -s $work/stdout ]] && fail "$what: printed on stdout: $(head -c 200 "$work/stdout")"
    local lines
    lines=$(wc -l <"$work/stderr")
    [[ $lines == 1 && $(tail -c 1 "$work/stderr" | od -An -c | tr -d ' ') == '\n' ]] ||
        fail "$what: stderr is not exactly one line: $(cat "$work/stderr")"
    local line
    line=$(head -n 1 "$work/stderr")
    [[ $line == "instanttensor: "* ]] || fail "$what: stderr does not start with 'instanttensor: ': $line"
    [[ $line == *"$needle"* ]] || fail "$what: stderr does not name '$needle': $line"
}

# expect_usage_error ARGS...: exit 2 with a message on stderr, nothing on stdout.
expect_usage_error() {
    run "$@"
    [[ $rc == 2 ]] || fail "instanttensor $*: exit status $rc, expected 2 (stderr: $(cat "$work/stderr"))"
    [[ -s $work/stderr ]] || fail "instanttensor $*: no message on stderr"
    [[ -s $work/stdout ]] && fail "instanttensor $*: printed on stdout"
}

# expect_success ARGS...: exit 0 and nothing on stderr.
expect_success() {
    run "$@"
    [[ $rc == 0 ]] || fail "instanttensor $*: exit status $rc (stderr: $(cat "$work/stderr"))"
    [[ -s $work/stderr ]] && fail "instanttensor $*: printed on stderr: $(cat "$work/stderr")"
}

# check_hash_lines FILE: every line is 16 lowercase hex digits, two spaces, a name; names sorted
# by raw bytes and unique (lines of escaped names, starting with a backslash, are left out of the
# order check: their text is not their name).
check_hash_lines() {
    grep -Evq '^\\?[0-9a-f]{16}  .+$' "$1" && fail "malformed hash line: $(grep -Ev '^\\?[0-9a-f]{16}  .+$' "$1" | head -1)"
    grep -v '^\\' "$1" | cut -c19- | LC_ALL=C sort -c -u || fail "hash lines are not sorted by name (or repeat a name)"
}

# flip_data_byte FILE OFFSET: flips the lowest bit of the byte at OFFSET of FILE's data section.
flip_data_byte() {
    python3 - "$1" "$2" <<'PY' || fail "cannot change a byte of $1"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    at = 8 + struct.unpack("<Q", f.read(8))[0] + int(sys.argv[2])
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 1]))
PY
}

# Writes a 2 MiB sample in $work/sample (3 shards); its tensor count is fixed by the size ladder.
make_sample() {
    expect_success sample "$work/sample" --size-mib 2 --shards 3
    cp "$work/stdout" "$work/sample.out"
    index=$(head -n 1 "$work/sample.out")
    [[ $index == "$work/sample/model.safetensors.index.json" ]] || fail "sample printed index path '$index'"
    sample_tensors=156
}

case_sample_inspect_hash() {
    make_sample
    grep -q "^$sample_tensors tensors in 3 files" "$work/sample.out" || fail "sample summary: $(tail -1 "$work/sample.out")"
    local shards=("$work"/sample/model-0000?-of-00003.safetensors)
    [[ ${#shards[@]} == 3 ]] || fail "expected 3 shard files, found ${#shards[@]}"

    expect_success inspect "$index"
    local rows
    rows=$(grep -Ec '^(model\.|lm_head)' "$work/stdout")
    [[ $rows == "$sample_tensors" ]] || fail "inspect printed $rows tensor rows, expected $sample_tensors"
    head -n 1 "$work/stdout" | grep -Eq '^NAME +DTYPE +SHAPE +FILE +OFFSET +BYTES$' || fail "inspect header row"
    grep -Eq '^lm_head\.weight +BF16 +\[1024, 64\] ' "$work/stdout" || fail "inspect lm_head row"
    grep -qx 'format=pt' "$work/stdout" || fail "inspect metadata line"
    tail -n 1 "$work/stdout" | grep -q "^$sample_tensors tensors, 3 files, " || fail "inspect summary: $(tail -1 "$work/stdout")"

    expect_success hash "$index"
    cp "$work/stdout" "$work/hash.index"
    [[ $(wc -l <"$work/hash.index") == "$sample_tensors" ]] || fail "hash printed $(wc -l <"$work/hash.index") lines"
    check_hash_lines "$work/hash.index"

    # The same checkpoint named as a directory, as its shard files, with options: same digests.
    expect_success hash "$work/sample"
    cmp -s "$work/stdout" "$work/hash.index" || fail "hash of the directory differs from hash of the index"
    expect_success hash --device cpu --backend pread "${shards[@]}"
    cmp -s "$work/stdout" "$work/hash.index" || fail "hash of the shard files differs from hash of the index"

    # Same size, one shard, written twice: identical tensor bytes, identical files.
    expect_success sample "$work/one" --size-mib 2 --shards 1
    expect_success sample "$work/one-again" --size-mib 2 --shards 1
    cmp -s "$work/one/model-00001-of-00001.safetensors" "$work/one-again/model-00001-of-00001.safetensors" ||
        fail "sample is not deterministic"
    expect_success hash "$work/one"
    cmp -s "$work/stdout" "$work/hash.index" || fail "hash depends on how the checkpoint is sharded"

    # The 16 GiB target gives the Llama-3.1-8B shapes (checked without writing 16 GB).
    expect_success sample --dry-run --size-mib 16384 "$work/big"
    grep -q 'hidden 4096, intermediate 14336, 32 layers, vocab 128256, 32 heads (8 kv) of 128, BF16' "$work/stdout" ||
        fail "16384 MiB sample shape: $(tail -1 "$work/stdout")"
    grep -q '^291 tensors in 4 files, .*(16060522496 bytes)' "$work/stdout" || fail "16384 MiB sample size: $(tail -1 "$work/stdout")"
    [[ -e $work/big ]] && fail "sample --dry-run wrote $work/big"

    # --experts: each layer's MLP as that many experts, each a slice of its width (at 2 MiB, 17
    # layers of 6 + a router + 3 x 4 tensors, and 3 more), written and hashed like any other sample.
    expect_success sample "$work/moe" --size-mib 2 --shards 2 --experts 4
    grep -q '^326 tensors in 2 files, .*intermediate 224 as 4 experts of 56, 17 layers' "$work/stdout" ||
        fail "sample --experts 4: $(tail -1 "$work/stdout")"
    expect_success hash "$work/moe"
    [[ $(wc -l <"$work/stdout") == 326 ]] && grep -q '  model.layers.0.mlp.experts.3.down_proj.weight$' "$work/stdout" ||
        fail "hash of the --experts sample: $(head -3 "$work/stdout")"
    expect_failure "at most the MLP's width, 224" sample --dry-run --size-mib 2 --experts 225 "$work/moe"

    # --sparse: the same files, headers and summary; the tensors' bytes are zeros (holes where the
    # filesystem has them), and load like any others.
    expect_success sample "$work/sparse" --size-mib 2 --shards 3 --sparse
    cmp -s "$work/stdout" <(sed "s|$work/sample/|$work/sparse/|" "$work/sample.out") ||
        fail "sample --sparse printed: $(cat "$work/stdout")"
    local file header_end
    for file in "$work"/sparse/*.safetensors; do
        header_end=$((8 + $(od -An -t u8 -N 8 "$file")))
        cmp -s -n "$header_end" "$file" "$work/sample/${file##*/}" || fail "$file: not the sample's header"
        [[ $(stat -c %s "$file") == $(stat -c %s "$work/sample/${file##*/}") ]] || fail "$file: not the sample's size"
        [[ $(tail -c +$((header_end + 1)) "$file" | tr -d '\0' | wc -c) == 0 ]] || fail "$file: tensor bytes are not zeros"
    done
    expect_success hash "$work/sparse"
    [[ $(wc -l <"$work/stdout") == "$sample_tensors" ]] || fail "hash of the sparse sample printed $(wc -l <"$work/stdout") lines"
}

case_inspect_json() {
    command -v python3 >/dev/null || { echo "python3 not found: skipped"; exit 77; }
    make_sample
    expect_success inspect --json "$index"
    python3 - "$work/stdout" "$sample_tensors" <<'EOF' || fail "inspect --json of the sample"
import json, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
assert set(doc) == {"tensors", "metadata"}, doc.keys()
assert doc["metadata"] == {"format": "pt"}, doc["metadata"]
tensors = doc["tensors"]
assert len(tensors) == int(sys.argv[2]), len(tensors)
for t in tensors:
    assert set(t) == {"name", "dtype", "shape", "file", "offset", "nbytes"}, t
    assert t["dtype"] == "BF16" and all(isinstance(d, int) for d in t["shape"]), t
    n = 2
    for d in t["shape"]:
        n *= d
    assert t["nbytes"] == n and t["offset"] >= 8 and t["file"].endswith(".safetensors"), t
EOF
    # Awkward names survive the JSON escaping exactly.
    "$reference" "$work/names.safetensors" >/dev/null || { fail "hash_reference could not write its file"; return; }
    expect_success inspect --json "$work/names.safetensors"
    python3 - "$work/stdout" <<'EOF' || fail "inspect --json with awkward names"
import json, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
names = {t["name"] for t in doc["tensors"]}
expected = {"empty", "scalar", "B", "a", "z", "\u00e9t\u00e9", 'with "quotes"', "back\\slash", "new\nline", "big",
            "slash\\nline", "tab\there", "esc\x1b[31m", "nul\x00byte", "del\x7f"}
assert names == expected, names
assert doc["metadata"] == {"purpose": "hash reference"}, doc["metadata"]
scalar = [t for t in doc["tensors"] if t["name"] == "scalar"][0]
assert scalar["shape"] == [] and scalar["nbytes"] == 8 and scalar["dtype"] == "I64", scalar
EOF
    # In the table control characters and backslashes in a name are escaped: one row per tensor
    # still, and a newline prints unlike a backslash and an n.
    expect_success inspect "$work/names.safetensors"
    grep -q '^new\\nline ' "$work/stdout" || fail "inspect does not escape the newline of a name"
    grep -q '^slash\\\\nline ' "$work/stdout" || fail "inspect does not escape the backslash of a name"
    grep -q '^esc\\x1b\[31m ' "$work/stdout" || fail "inspect does not escape the ESC of a name"
    [[ $(sed '/^$/q' "$work/stdout" | grep -c .) == 16 ]] || fail "inspect table is not 1 header + 15 rows"
}

case_hash_reference() {
    "$reference" "$work/ref.safetensors" >"$work/expected" || { fail "hash_reference failed"; return; }
    expect_success hash "$work/ref.safetensors"
    diff "$work/expected" "$work/stdout" >&2 || fail "hash differs from the one-shot XXH3 reference"
    # XXH3-64 of no bytes is a published constant; "B" sorts before "a"; escaped names start with \.
    grep -qx '2d06800538d394c2  empty' "$work/stdout" || fail "digest of the empty tensor"
    [[ $(cut -c19- "$work/stdout" | head -2 | tr '\n' ' ') == "B a " ]] || fail "names are not in raw byte order"
    grep -Eqx '\\[0-9a-f]{16}  new\\nline' "$work/stdout" || fail "newline in a name is not escaped as sha256sum does"
    grep -Eqx '\\[0-9a-f]{16}  back\\\\slash' "$work/stdout" || fail "backslash in a name is not escaped as sha256sum does"
    grep -Eqx '\\[0-9a-f]{16}  nul\\x00byte' "$work/stdout" || fail "NUL in a name is not escaped"
    grep -Eqx '\\[0-9a-f]{16}  del\\x7f' "$work/stdout" || fail "DEL in a name is not escaped"
    check_hash_lines "$work/stdout"
}

# Every backend and page-cache policy delivers the same bytes: hash through each equals hash
# through pread; load reports what it did, as text and as JSON.
case_load_backends() {
    make_sample
    expect_success hash --device cpu --backend pread --direct off "$work/sample"
    cp "$work/stdout" "$work/hash.pread"
    local backend direct
    for backend in auto uring pread memory; do
        for direct in auto on off; do
            expect_success hash --device cpu --backend "$backend" --direct "$direct" --staging-mib 1 "$work/sample"
            cmp -s "$work/stdout" "$work/hash.pread" || fail "hash via $backend (direct $direct) differs from pread"
        done
    done
    expect_success load --device cpu "$work/sample"
    grep -Eq '^loaded [0-9]+ tensors .* to cpu in [0-9.]+ s: [0-9.]+ GB/s$' "$work/stdout" || fail "load summary: $(cat "$work/stdout")"
    grep -q '^backend ' "$work/stdout" || fail "load does not report its backend"
    grep -Eq '^time: landing [0-9]+%, storage idle [0-9]+%, staging full [0-9]+%, queue full [0-9]+%, sink full [0-9]+%, consumer [0-9]+%$' \
        "$work/stdout" || fail "load does not say where its time went: $(cat "$work/stdout")"
    expect_success load --device cpu --backend pread --json "$work/sample"
    if command -v python3 >/dev/null; then
        python3 - "$work/stdout" <<'PY' || fail "load --json: $(cat "$work/stdout")"
import json, sys
doc = json.load(open(sys.argv[1]))
for key in ("device", "backend", "tensors", "bytes", "seconds", "total_seconds", "gbps", "staging_bytes", "ring_bytes", "peak_rss_bytes"):
    assert key in doc, key
assert doc["device"] == "cpu" and doc["backend"] == "pread" and doc["bytes"] > 0, doc
assert 0 < doc["seconds"] <= doc["total_seconds"], doc
times = doc["times"]
assert set(times) == {"consumer", "landing", "storage_idle", "copies_idle", "staging_full", "queue_full", "sink_full"}, times
assert all(0 <= s <= doc["seconds"] for s in times.values()), times
assert times["copies_idle"] == 0, times  # a host load's copies are its landing
PY
    fi
    # --ring-mib sizes the host ring; one smaller than twice the largest tensor is refused, saying so.
    expect_success load --device cpu --ring-mib 3 --json "$work/sample"
    grep -q '"ring_bytes":3145728' "$work/stdout" || fail "load --ring-mib 3: $(cat "$work/stdout")"
    expect_success load --device cpu --staging-mib 1 "$work/sample"
    grep -q 'staging 1.00 MiB' "$work/stdout" || fail "--staging-mib 1 is not what the load used: $(cat "$work/stdout")"
    # Without --staging-mib, the staging grows to two slots of a large --slot-mib.
    expect_success load --device cpu --slot-mib 128 --json "$work/sample"
    grep -q '"staging_bytes":268435456' "$work/stdout" || fail "--slot-mib 128 without --staging-mib: $(cat "$work/stdout")"
    # --keep lands every tensor in host memory of its own, kept to the end, instead of the ring.
    local direct
    for direct in on off; do
        expect_success load --device cpu --keep --direct "$direct" --json "$work/sample"
        if command -v python3 >/dev/null; then
            python3 - "$work/stdout" <<'PY' || fail "load --keep --direct $direct --json: $(cat "$work/stdout")"
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["kept_bytes"] == doc["bytes"] > 0 and doc["ring_bytes"] == 0, doc
PY
        fi
    done
    expect_success load --device cpu --keep "$work/sample"
    grep -Eq 'tensors kept [0-9.]+ (KiB|MiB)' "$work/stdout" || fail "load --keep does not report the memory it kept: $(cat "$work/stdout")"
    expect_failure "--keep" load --device 0 --keep "$work/sample"
}

# seal and load --verify: a manifest from hash verifies a load; seal stores each file's digests in
# its header (tensors, offsets, bytes, other metadata and the file's mode unchanged), and --verify
# checks them; a changed byte, an unsealed file and a malformed manifest each fail naming the file.
# load --verify-files checks whole files against sha256sum's manifest, a sealed header failing it.
case_seal_verify() {
    make_sample
    expect_success hash "$work/sample"
    cp "$work/stdout" "$work/sample.xxh3"
    expect_success load --device cpu --verify-with "$work/sample.xxh3" "$work/sample"
    grep -qx "verified $sample_tensors tensors against $work/sample.xxh3" "$work/stdout" || fail "load --verify-with: $(cat "$work/stdout")"
    # --verify-files: each file's SHA-256 against sha256sum's manifest, made where the files lie.
    (cd "$work/sample" && sha256sum -- *.safetensors) >"$work/sample.sha256" || fail "sha256sum of the sample"
    expect_success load --device cpu --verify-files "$work/sample.sha256" "$work/sample"
    grep -qx "verified 3 files against $work/sample.sha256 (SHA-256)" "$work/stdout" || fail "load --verify-files: $(cat "$work/stdout")"
    expect_success load --device cpu --verify-files "$work/sample.sha256" --json "$work/sample"
    grep -q '"verified_files":3' "$work/stdout" || fail "load --verify-files --json: $(cat "$work/stdout")"
    expect_failure "has no seal" load --device cpu --verify "$work/sample"
    local shard=$work/sample/model-00002-of-00003.safetensors
    python3 - "$shard" >"$work/header.before" <<'PY' || fail "cannot read the header of $shard"
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
print(json.dumps({k: v for k, v in header.items() if k != "__metadata__"}, sort_keys=True))
print(sorted(header.get("__metadata__", {})))
PY
    chmod 640 "$shard"
    expect_success seal --backend pread "$work/sample"
    [[ $(grep -c '^sealed ' "$work/stdout") == 3 ]] || fail "seal did not report 3 files: $(cat "$work/stdout")"
    grep -q "^sealed $shard (" "$work/stdout" || fail "seal does not name $shard"
    # A seal changes only headers, which a file's SHA-256 covers.
    expect_failure "$work/sample/model-00001-of-00003.safetensors: its bytes hash to " \
        load --device cpu --verify-files "$work/sample.sha256" "$work/sample"
    [[ $(stat -c %a "$shard") == 640 ]] || fail "seal changed the mode of $shard to $(stat -c %a "$shard")"
    python3 - "$shard" "$work/header.before" "$work/sample.xxh3" <<'PY' || fail "the sealed header of $shard"
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
before = open(sys.argv[2]).read().splitlines()
meta = header["__metadata__"]
assert json.dumps({k: v for k, v in header.items() if k != "__metadata__"}, sort_keys=True) == before[0]
assert sorted(set(eval(before[1])) | {"instanttensor.xxh3"}) == sorted(meta), meta.keys()
manifest = dict(reversed(line.split("  ", 1)) for line in open(sys.argv[3]).read().splitlines())
seal = meta["instanttensor.xxh3"].splitlines()
assert len(seal) == len(header) - 1, len(seal)
for line in seal:
    digest, name = line.split("  ", 1)
    assert name in header and manifest[name] == digest, line
PY
    expect_success hash "$work/sample"
    cmp -s "$work/stdout" "$work/sample.xxh3" || fail "sealing changed a tensor's bytes"
    expect_success load --device cpu --verify --json "$work/sample"
    grep -q "\"verified\":$sample_tensors" "$work/stdout" || fail "load --verify --json: $(cat "$work/stdout")"
    expect_success seal "$work/sample"  # sealing again replaces the seal
    expect_success load --device cpu --verify "$work/sample"
    grep -qx "verified $sample_tensors tensors against the checkpoint's seals" "$work/stdout" || fail "load --verify: $(cat "$work/stdout")"
    # A changed byte in a tensor's data: both sources of digests refuse it, naming the file.
    flip_data_byte "$shard" 1000
    expect_failure "$shard: tensor '" load --device cpu --verify "$work/sample"
    grep -q 'its bytes digest to [0-9a-f]\{16\}, its seal expects [0-9a-f]\{16\}' "$work/stderr" || fail "the mismatch message: $(cat "$work/stderr")"
    expect_failure "$work/sample.xxh3 expects" load --device cpu --verify-with "$work/sample.xxh3" "$work/sample"
    # Awkward names (escaped in the seal) and other metadata survive a seal.
    "$reference" "$work/names.safetensors" >/dev/null || { fail "hash_reference could not write its file"; return; }
    expect_success seal "$work/names.safetensors"
    expect_success load --device cpu --verify "$work/names.safetensors"
    grep -qx "verified 15 tensors against the checkpoint's seals" "$work/stdout" || fail "awkward names: $(cat "$work/stdout")"
    expect_success inspect --json "$work/names.safetensors"
    grep -q '"purpose":"hash reference"' "$work/stdout" || fail "seal lost the file's other metadata"
    # A malformed manifest names itself and the line; --verify and --verify-with exclude each other.
    printf '0123456789abcdef  a\nnot a digest\n' >"$work/bad.xxh3"
    expect_failure "$work/bad.xxh3: line 2" load --device cpu --verify-with "$work/bad.xxh3" "$work/sample"
    expect_failure "$work/absent.xxh3" load --device cpu --verify-with "$work/absent.xxh3" "$work/sample"
    expect_usage_error load --verify --verify-with "$work/sample.xxh3" "$work/sample"
}

# encrypt_decrypt: keygen writes a 0600 key and never overwrites; encrypt keeps every header readable
# (same tensors, the keys in __metadata__) and decrypt gives back the same bytes; loads need the
# key, refuse another and a changed byte, naming the file; the key never shows in any output.
case_encrypt_decrypt() {
    make_sample
    expect_success hash "$work/sample"
    cp "$work/stdout" "$work/sample.xxh3"
    expect_success keygen "$work/key"
    [[ $(stat -c %a "$work/key") == 600 ]] || fail "keygen wrote mode $(stat -c %a "$work/key")"
    expect_failure "$work/key: exists" keygen "$work/key"
    local key
    key=$(cat "$work/key")
    [[ $key =~ ^[0-9a-f]{64}$ ]] || fail "the key file does not hold 64 hex digits"
    expect_success encrypt --key-file "$work/key" "$work/sample" "$work/enc"
    [[ $(grep -c '^encrypted ' "$work/stdout") == 3 ]] || fail "encrypt did not report 3 files: $(cat "$work/stdout")"
    cmp -s "$work/sample/model.safetensors.index.json" "$work/enc/model.safetensors.index.json" || fail "the index was not copied"
    python3 - "$work/sample" "$work/enc" <<'PY' || fail "the encrypted headers"
import json, pathlib, struct, sys
def header(p):
    with open(p, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
for plain in sorted(pathlib.Path(sys.argv[1]).glob("*.safetensors")):
    a, b = header(plain), header(pathlib.Path(sys.argv[2]) / plain.name)
    meta = b.pop("__metadata__")
    a.pop("__metadata__", None)
    assert a == b, plain
    assert {"instanttensor.cipher", "instanttensor.chunk_bytes", "instanttensor.salt", "instanttensor.key_id",
            "instanttensor.tags"} <= set(meta), meta.keys()
PY
    expect_failure "is encrypted" load --device cpu "$work/enc"
    expect_failure "is encrypted" hash "$work/enc"
    expect_success load --device cpu --key-file "$work/key" --json "$work/enc"
    expect_success hash --key-file "$work/key" "$work/enc"
    cmp -s "$work/stdout" "$work/sample.xxh3" || fail "the decrypted tensors' digests differ from the plain ones"
    expect_success load --device cpu --key-file "$work/key" --verify-with "$work/sample.xxh3" "$work/enc"
    (cd "$work/enc" && sha256sum -- *.safetensors) >"$work/enc.sha256" || fail "sha256sum of the encrypted copy"
    expect_failure "an encrypted checkpoint's chunks are authenticated" \
        load --device cpu --key-file "$work/key" --verify-files "$work/enc.sha256" "$work/enc"
    INSTANTTENSOR_KEY=$key expect_success decrypt --key-env INSTANTTENSOR_KEY "$work/enc" "$work/dec"
    expect_success hash "$work/dec"
    cmp -s "$work/stdout" "$work/sample.xxh3" || fail "decrypt did not give back the plain tensors"
    for f in "$work"/sample/*.safetensors; do
        cmp -s "$f" "$work/dec/$(basename "$f")" || fail "decrypt did not give back $f byte for byte"
    done
    expect_failure "$work/dec: exists" decrypt --key-file "$work/key" "$work/enc" "$work/dec"
    expect_success keygen "$work/other"
    expect_failure "another key" load --device cpu --key-file "$work/other" "$work/enc"
    expect_failure "is not encrypted" load --device cpu --key-file "$work/key" "$work/sample"
    expect_failure "seal before encrypting" seal --key-file "$work/key" "$work/enc"
    local shard=$work/enc/model-00002-of-00003.safetensors
    flip_data_byte "$shard" 1000
    expect_failure "$shard: tensor '" load --device cpu --key-file "$work/key" "$work/enc"
    grep -q "fails authentication" "$work/stderr" || fail "the tampering message: $(cat "$work/stderr")"
    expect_failure "$shard" decrypt --key-file "$work/key" "$work/enc" "$work/dec2"
    [[ -e $work/dec2 ]] && fail "a decrypt that failed left $work/dec2 behind"
    printf 'not a key\n' >"$work/bad-key"
    expect_failure "$work/bad-key: does not hold a key" load --device cpu --key-file "$work/bad-key" "$work/enc"
    expect_failure "INSTANTTENSOR_UNSET_KEY" load --device cpu --key-env INSTANTTENSOR_UNSET_KEY "$work/enc"
    expect_usage_error encrypt "$work/sample" "$work/enc3"
    expect_usage_error load --key-file "$work/key" --key-env X "$work/enc"
    expect_usage_error encrypt --key-file "$work/key" --chunk-kib 3 "$work/sample" "$work/enc3"
    # The key never appears in anything the command printed.
    grep -qF "$key" "$work/transcript" && fail "the key was printed"
    expect_success encrypt --key-file "$work/key" --cipher xchacha20-poly1305 --chunk-kib 64 "$work/sample" "$work/enc-chacha"
    expect_success hash --key-file "$work/key" "$work/enc-chacha"
    cmp -s "$work/stdout" "$work/sample.xxh3" || fail "xchacha20-poly1305 with 64 KiB chunks did not round-trip"
}

# plan: one row per rank; with every tensor kept, each of 4 ranks reads about a quarter and
# receives the rest; splitting the projections along their rows, or along the dimensions of tensor
# parallelism, makes every rank receive less, and never more than it keeps.
case_plan() {
    make_sample
    expect_success plan --ranks 4 --window-mib 1 --slot-mib 1 "$work/sample"
    grep -Eq "^$sample_tensors tensors \(.*\) for 4 ranks in [0-9]+ windows of at most 1.00 MiB" "$work/stdout" ||
        fail "plan summary: $(head -1 "$work/stdout")"
    [[ $(grep -Ec '^ +[0-3]  ' "$work/stdout") == 4 ]] || fail "plan does not print 4 rank rows: $(cat "$work/stdout")"
    expect_success plan --json --ranks 4 --window-mib 1 --slot-mib 1 "$work/sample"
    cp "$work/stdout" "$work/plan.all"
    expect_success plan --json --ranks 4 --window-mib 1 --slot-mib 1 --split-rows 'proj\.weight$' "$work/sample"
    if command -v python3 >/dev/null; then
        python3 - "$work/plan.all" "$work/stdout" <<'PY' || fail "plan --json: $(cat "$work/plan.all" "$work/stdout")"
import json, sys
everything, split = (json.load(open(p)) for p in sys.argv[1:3])
for doc in (everything, split):
    assert doc["ranks"] == 4 and len(doc["per_rank"]) == 4, doc
for whole, part in zip(everything["per_rank"], split["per_rank"]):
    assert whole["kept_bytes"] == everything["bytes"], whole
    # Each rank reads about a quarter (pages of alignment aside) and receives the rest.
    assert abs(whole["read_bytes"] - everything["bytes"] / 4) < 0.1 * everything["bytes"], whole
    assert whole["read_bytes"] + whole["received_bytes"] >= whole["kept_bytes"], whole
    assert part["kept_bytes"] < whole["kept_bytes"] and part["received_bytes"] < whole["received_bytes"], (whole, part)
assert split["send_windows"] > 0, split
PY
        # Tensor parallelism: row-parallel weights along dimension 1, column-parallel along 0.
        cp "$work/stdout" "$work/plan.rows"
        expect_success plan --json --ranks 4 --window-mib 1 --slot-mib 1 --split 'o_proj|down_proj=1' \
            --split 'q_proj|k_proj|v_proj|gate_proj|up_proj=0' "$work/sample"
        python3 - "$work/plan.rows" "$work/stdout" <<'PY' || fail "plan --split: $(cat "$work/plan.rows" "$work/stdout")"
import json, sys
rows, tp = (json.load(open(p)) for p in sys.argv[1:3])
for by_rows, by_tp in zip(rows["per_rank"], tp["per_rank"]):
    # The same tensors split, along other dimensions: the same quarter kept, give or take a row.
    assert abs(by_tp["kept_bytes"] - by_rows["kept_bytes"]) < 0.01 * by_rows["kept_bytes"], (by_rows, by_tp)
    # Nobody receives a byte it does not keep.
    assert by_tp["received_bytes"] <= by_tp["kept_bytes"], by_tp
assert tp["send_windows"] > 0, tp
PY
    fi
    # Patterns match in linear time: one that backtracks exponentially in ECMAScript engines, and a
    # tensor name of 50,000 characters that overflowed std::regex's recursion.
    expect_success plan --ranks 4 --split-rows '(.*)*x' "$work/sample"
    if command -v python3 >/dev/null; then
        python3 - "$work/long.safetensors" <<'PY' || fail "could not write the long-name file"
import json, struct, sys
header = json.dumps({"p" * 50000 + "proj": {"dtype": "U8", "shape": [4, 2], "data_offsets": [0, 8]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(header)) + header + bytes(8))
PY
        expect_success plan --ranks 2 --split-rows '.*proj.*' "$work/long.safetensors"
        expect_success plan --ranks 2 --split-rows '(p|pp)*proj$' "$work/long.safetensors"
    fi
    expect_usage_error plan --ranks 0 "$work/sample"
    expect_usage_error plan --split-rows '(' "$work/sample"
    grep -q 'not a regular expression' "$work/stderr" || fail "--split-rows '(' does not say why"
    expect_usage_error plan --split 'o_proj' "$work/sample"
    grep -q 'is not REGEX=DIM' "$work/stderr" || fail "--split without =DIM does not say why"
    expect_usage_error plan --split 'o_proj=one' "$work/sample"
    grep -q 'is not a dimension' "$work/stderr" || fail "--split REGEX=one does not say why"
    expect_usage_error plan --split 'o_proj=64' "$work/sample"
    expect_usage_error plan --split '(=1' "$work/sample"
    grep -q 'not a regular expression' "$work/stderr" || fail "--split '(=1' does not say why"
    expect_usage_error plan --window-mib 1 --slot-mib 4 "$work/sample"
    expect_failure "$work/missing" plan "$work/missing"
    # Loading as a rank of a group needs a GPU (and NCCL); here it says which option cannot run.
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        expect_failure "--ranks" load --ranks 1 "$work/sample"
    fi
}

case_usage_errors() {
    expect_usage_error
    expect_usage_error frobnicate
    expect_usage_error inspect
    expect_usage_error hash
    expect_usage_error sample
    expect_usage_error inspect --bogus "$work"
    expect_usage_error hash --device cuda "$work"
    grep -q 'not cpu, auto or a GPU ordinal' "$work/stderr" || fail "--device cuda does not say why"
    expect_usage_error hash --device "$work"
    expect_usage_error hash --backend floppy "$work"
    expect_usage_error load
    expect_usage_error load --direct sometimes "$work"
    expect_usage_error load --staging-mib 0 "$work"
    expect_usage_error load --staging-mib 4 --slot-mib 4 "$work"
    grep -q 'at most half of --staging-mib' "$work/stderr" || fail "--slot-mib over half the staging does not say why"
    expect_usage_error load --slot-mib 2048 --staging-mib 8192 "$work"
    expect_usage_error plan --slot-mib 2048 "$work"
    expect_usage_error load --ring-mib -1 "$work"
    expect_usage_error load --rank 1 "$work"
    expect_usage_error load --ranks 2 "$work"
    expect_usage_error load --ranks 2 --rank 2 --nccl-id "$work/id" "$work"
    expect_usage_error load --ranks 1 --device cpu "$work"
    expect_usage_error load --ranks 1 --split-rows '[' "$work"
    expect_usage_error load --ranks 1 --split 'proj' "$work"
    expect_usage_error load --split 'proj=1' "$work"
    expect_usage_error load --group-timeout 5 "$work"
    expect_usage_error load --ranks 1 --group-timeout 0 "$work"
    expect_usage_error hash --ranks 1 --window-mib 1 --slot-mib 4 "$work"
    expect_usage_error sample --dtype F4 "$work/s"
    expect_usage_error sample --dtype bf16 "$work/s"
    expect_usage_error sample --shards 0 "$work/s"
    expect_usage_error sample --size-mib 0 "$work/s"
    expect_usage_error sample --size-mib lots "$work/s"
    grep -q "'lots' is not a whole number" "$work/stderr" || fail "--size-mib lots does not say it is not a number"
    expect_usage_error load --staging-mib 0x10 "$work"
    grep -q "'0x10' is not a whole number" "$work/stderr" || fail "--staging-mib 0x10 does not say it is not a number"
    expect_usage_error plan --ranks 5000 "$work"
    grep -q '5000 is not in \[1, 4096\]' "$work/stderr" || fail "--ranks 5000 does not say the range"
    [[ -e $work/s ]] && fail "a refused sample command wrote $work/s"
}

case_help_version() {
    expect_success --version
    [[ $(cat "$work/stdout") == "$version" ]] || fail "--version printed '$(cat "$work/stdout")', expected $version"
    expect_success --help
    for sub in inspect hash load plan sample; do
        grep -q "^  $sub " "$work/stdout" || fail "--help does not list $sub"
    done
    expect_success --help-all
    for opt in --json --device --backend --direct --staging-mib --shards --size-mib --dtype --dry-run; do
        grep -q -- "$opt" "$work/stdout" || fail "--help-all does not document $opt"
    done
    for sub in inspect hash load plan sample; do
        expect_success "$sub" --help
        grep -q "^Usage: .*$sub" "$work/stdout" || fail "$sub --help has no usage line"
    done
}

case_bad_inputs() {
    local n=0 f
    shopt -s nullglob
    for f in "$fixtures"/bad/*.safetensors; do
        expect_failure "$f" inspect "$f"
        expect_failure "$f" hash "$f"
        expect_failure "$f" load --device cpu "$f"
        n=$((n + 1))
    done
    echo "fixtures/bad: $n files"

    # An empty path, and a stdout that cannot be written, are named.
    expect_failure "an empty path ('') names no file" inspect ""
    make_sample
    timeout 60 "$bin" inspect "$work/sample" >&- 2>"$work/stderr"
    [[ $? == 1 && $(cat "$work/stderr") == "instanttensor: <stdout>: write failed"* ]] ||
        fail "inspect with stdout closed: $(cat "$work/stderr")"
    if [[ -w /dev/full ]]; then
        timeout 60 "$bin" hash "$work/sample" >/dev/full 2>"$work/stderr"
        [[ $? == 1 && $(cat "$work/stderr") == "instanttensor: <stdout>: write failed: No space left on device"* ]] ||
            fail "hash to a full disk: $(cat "$work/stderr")"
    fi

    # sample never writes through a symbolic link already in DIR.
    mkdir -p "$work/linked" && echo keep >"$work/outside"
    ln -s "$work/outside" "$work/linked/model-00001-of-00001.safetensors"
    expect_failure "$work/linked/model-00001-of-00001.safetensors: is a symbolic link" sample "$work/linked" --shards 1
    [[ $(cat "$work/outside") == keep ]] || fail "sample wrote through a symbolic link"

    local shard="$work/sample/model-00001-of-00003.safetensors"
    expect_failure "$work/missing.safetensors" inspect "$work/missing.safetensors"
    expect_failure "$work/missing.safetensors" hash "$shard" "$work/missing.safetensors"
    mkdir -p "$work/empty-dir" "$work/other-dir"
    touch "$work/other-dir/notes.txt"
    expect_failure "$work/empty-dir" inspect "$work/empty-dir"
    expect_failure "$work/other-dir" hash "$work/other-dir"
    : >"$work/empty.safetensors"
    expect_failure "$work/empty.safetensors" inspect "$work/empty.safetensors"
    expect_failure "$work/empty.safetensors" hash "$work/empty.safetensors"
    head -c 1000 "$shard" >"$work/truncated.safetensors"
    expect_failure "$work/truncated.safetensors" inspect "$work/truncated.safetensors"
    head -c -1 "$shard" >"$work/short.safetensors"
    expect_failure "$work/short.safetensors" hash "$work/short.safetensors"
    printf '\xff\xff\xff\xff\xff\xff\xff\x7f' >"$work/huge-header.safetensors"
    expect_failure "$work/huge-header.safetensors" inspect "$work/huge-header.safetensors"
    printf '\x08\x00\x00\x00\x00\x00\x00\x00[1,2,3]' >"$work/array.safetensors"
    expect_failure "$work/array.safetensors" inspect "$work/array.safetensors"
    # The same file twice, and a tensor name repeated across files of one checkpoint.
    expect_failure "$shard" inspect "$shard" "$shard"
    cp "$shard" "$work/copy.safetensors"
    expect_failure "$work/copy.safetensors" hash "$shard" "$work/copy.safetensors"
    # An index naming a shard that is not there.
    mkdir -p "$work/lost"
    printf '{"weight_map": {"w": "gone.safetensors"}}' >"$work/lost/model.safetensors.index.json"
    expect_failure "$work/lost" inspect "$work/lost"
    # A FIFO must be refused, not waited on; a device is not a checkpoint either.
    if mkfifo "$work/fifo.safetensors" 2>/dev/null; then
        expect_failure "$work/fifo.safetensors" hash "$work/fifo.safetensors"
    fi
    expect_failure "/dev/null" inspect /dev/null
    # A newline in a path is escaped: the message stays one line.
    cp "$work/empty.safetensors" "$work/new"$'\n'"line.safetensors"
    expect_failure "$work/new\\nline.safetensors" inspect "$work/new"$'\n'"line.safetensors"
    # sample into a path that is a file.
    expect_failure "$work/empty.safetensors" sample "$work/empty.safetensors" --size-mib 1
}

"case_$case_name"
if ((failures > 0)); then
    echo "$case_name: $failures failure(s)" >&2
    exit 1
fi
echo "$case_name: passed"
