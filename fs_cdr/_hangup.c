/* fs_cdr._hangup: split a serialized hangup event without a Python object per channel variable
 * (split), and build the record's columns from the headers read (columns, further below).
 *
 * A CHANNEL_HANGUP_COMPLETE event serialized by FreeSWITCH is one flat JSON object of ~250 string
 * headers, ~200 of them channel variables ("variable_<name>"). Decoding it whole makes ~500 Python
 * strings, and `details` then serializes the 200 variables again. split() makes only what the record
 * builder reads: every header that is not a channel variable, the variables the plan marks as read,
 * and `details` as JSON text, copied from the event's own escaped text.
 *
 * It is a fast path, never the only path: anything it does not fully understand (an escape other than
 * \" \\ \b \f \n \r \t, invalid UTF-8, a control character, a value that is not a string, a secret
 * hint next to "=") makes it return None and the caller decodes the event in Python, which handles
 * everything (channel.decode_event, RecordBuilder). For what it accepts its result equals the Python
 * path's, byte for byte (tests/test_hangup_split.py compares the two on recorded, hostile and generated
 * events). It reads only inside the buffer it was given, allocates in proportion to it, does not
 * recurse, and raises only MemoryError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* read_string and skip_space run for every header: inlined, the split is a sixth faster. read_string
 * looks 16 bytes at a time where SSE2 is (every x86-64), then 8, then one: another tenth. */
#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* A dict sized for ``size`` items up front where CPython has the call (it left the API in 3.13). */
static inline PyObject *new_dict(Py_ssize_t size)
{
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_NewPresized(size);
#else
    (void)size;
    return PyDict_New();
#endif
}

#define PREFIX "variable_"
#define PREFIX_LEN 9
#define MASK "***"
#define MASK_LEN 3

/* Plan flags, one byte per header of a layout (built by record.RecordBuilder._split_plan). */
#define PLAN_SECRET 1
#define PLAN_READ 2

static PyObject *none(void)
{
    Py_INCREF(Py_None);
    return Py_None;
}

typedef struct {
    Py_ssize_t key, key_len, value, value_len;
    char escaped;   /* the value holds a backslash escape */
    char non_ascii; /* the value holds a byte >= 0x80 */
    char variable;  /* the key starts with "variable_" */
    char array;     /* the value is an array of strings (FreeSWITCH's array headers): [ to ] */
} Header;

typedef struct {
    const unsigned char *s;
    Py_ssize_t n, i;
    int non_ascii;    /* some string holds a byte >= 0x80 */
    uint64_t layout;  /* a hash of the keys in order */
} Cursor;

static ALWAYS_INLINE void skip_space(Cursor *c)
{
    while (c->i < c->n) {
        unsigned char ch = c->s[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            return;
        c->i++;
    }
}

/* Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlongs, no surrogates, nothing
 * past U+10FFFF), or 0. */
static Py_ssize_t utf8_length(const unsigned char *s, Py_ssize_t i, Py_ssize_t n)
{
    unsigned char b0 = s[i];
    Py_ssize_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF)
        need = 1;
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        if (b0 == 0xE0)
            lo = 0xA0;
        else if (b0 == 0xED)
            hi = 0x9F;
    }
    else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        if (b0 == 0xF0)
            lo = 0x90;
        else if (b0 == 0xF4)
            hi = 0x8F;
    }
    else
        return 0;
    if (n - i - 1 < need)
        return 0;
    if (s[i + 1] < lo || s[i + 1] > hi)
        return 0;
    for (Py_ssize_t k = 2; k <= need; k++)
        if (s[i + k] < 0x80 || s[i + k] > 0xBF)
            return 0;
    return need + 1;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* The high bit of each of 8 bytes that is '"', '\\', a control character or >= 0x80 (the bytes
 * read_string must look at). A flag can be false only above a true one, so the lowest is exact. */
static inline uint64_t special(uint64_t v)
{
    uint64_t quote = v ^ (ONES * '"'), backslash = v ^ (ONES * '\\');
    return (((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash) | (v - ONES * 0x20) | v) & HIGHS;
}

/* A JSON string at the cursor (which is on its opening quote): its content's offset and length, and
 * whether it holds an escape or a byte >= 0x80. Returns 0 for anything this fast path does not take. */
static ALWAYS_INLINE int read_string(Cursor *c, Py_ssize_t *start, Py_ssize_t *length, char *escaped, char *non_ascii)
{
    const unsigned char *s = c->s;
    Py_ssize_t n = c->n, i = c->i + 1;
    *start = i;
    *escaped = 0;
    *non_ascii = 0;
    while (i < n) {
        unsigned char ch;
#if defined(__SSE2__)
        while (n - i >= 16) {  /* 16 bytes at a time to the next byte that needs a look */
            __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
            int mask = _mm_movemask_epi8(_mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')))));
            if (mask) {
                i += __builtin_ctz((unsigned)mask);
                goto look;
            }
            i += 16;
        }
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && (defined(__GNUC__) || defined(__clang__))
        while (n - i >= 8) {  /* 8 bytes at a time to the next byte that needs a look */
            uint64_t v, found;
            memcpy(&v, s + i, 8);
            found = special(v);
            if (found) {
                i += __builtin_ctzll(found) >> 3;
                break;
            }
            i += 8;
        }
        if (i >= n)
            break;
#endif
#if defined(__SSE2__)
    look:
#endif
        ch = s[i];
        if (ch == '"') {
            *length = i - *start;
            c->i = i + 1;
            return 1;
        }
        if (ch == '\\') {
            if (i + 1 >= n)
                return 0;
            switch (s[i + 1]) {
            case '"': case '\\': case 'b': case 'f': case 'n': case 'r': case 't':
                break;
            default:  /* \u (NUL, surrogates, letters in disguise) and \/ take the Python path */
                return 0;
            }
            *escaped = 1;
            i += 2;
        }
        else if (ch < 0x20)
            return 0;
        else if (ch >= 0x80) {
            Py_ssize_t k = utf8_length(s, i, n);
            if (!k)
                return 0;
            *non_ascii = 1;
            i += k;
        }
        else
            i++;
    }
    return 0;
}

/* An array of strings at the cursor (on its '['), written compactly as FreeSWITCH and orjson write
 * it (whitespace inside takes the Python path, so the text can be copied into details as it is). */
static int read_array(Cursor *c, Header *h)
{
    Py_ssize_t start, length;
    char escaped, non_ascii;
    h->array = 1;
    h->value = c->i;
    h->escaped = 0;
    h->non_ascii = 0;
    c->i++;
    if (c->i < c->n && c->s[c->i] == ']') {
        c->i++;
        h->value_len = c->i - h->value;
        return 1;
    }
    for (;;) {
        if (c->i >= c->n || c->s[c->i] != '"')
            return 0;
        if (!read_string(c, &start, &length, &escaped, &non_ascii))
            return 0;
        h->escaped |= escaped;
        h->non_ascii |= non_ascii;
        if (c->i < c->n && c->s[c->i] == ',') {
            c->i++;
            continue;
        }
        if (c->i < c->n && c->s[c->i] == ']') {
            c->i++;
            h->value_len = c->i - h->value;
            return 1;
        }
        return 0;
    }
}

/* The headers of a flat object of strings, in order; -1 for anything else, -2 out of memory. */
static Py_ssize_t read_headers(Cursor *c, Header **out)
{
    Py_ssize_t count = 0, capacity = 512;
    Header *headers = PyMem_Malloc(capacity * sizeof(Header));
    uint64_t hash = 0xcbf29ce484222325ULL;
    if (!headers)
        return -2;
    skip_space(c);
    if (c->i >= c->n || c->s[c->i] != '{')
        goto refuse;
    c->i++;
    skip_space(c);
    if (c->i < c->n && c->s[c->i] == '}') {
        c->i++;
        goto end;
    }
    for (;;) {
        Header *h;
        char key_escaped, key_non_ascii;
        if (count == capacity) {
            Header *grown = PyMem_Realloc(headers, 2 * capacity * sizeof(Header));
            if (!grown) {
                PyMem_Free(headers);
                return -2;
            }
            headers = grown;
            capacity *= 2;
        }
        h = &headers[count];
        if (c->i >= c->n || c->s[c->i] != '"')
            goto refuse;
        if (!read_string(c, &h->key, &h->key_len, &key_escaped, &key_non_ascii) || key_escaped)
            goto refuse;
        c->non_ascii |= key_non_ascii;
        h->variable = h->key_len >= PREFIX_LEN && memcmp(c->s + h->key, PREFIX, PREFIX_LEN) == 0;
        {  /* the layout hash, one multiply per key (same_layout checks the match itself): each key's
            * length, its first 8 bytes after "variable_" (or its first 8) and its last 8 */
            const unsigned char *k = c->s + h->key;
            Py_ssize_t length = h->key_len;
            uint64_t first = 0, last = 0;
            if (length >= 8) {
                memcpy(&first, k + (length >= PREFIX_LEN + 8 ? PREFIX_LEN : 0), 8);
                memcpy(&last, k + length - 8, 8);
            }
            else
                memcpy(&first, k, length);
            hash = (hash ^ (first * 0x9E3779B97F4A7C15ULL) ^ last ^ (uint64_t)length) * 0xBF58476D1CE4E5B9ULL;
            hash ^= hash >> 31;
        }
        if (c->i < c->n && c->s[c->i] == ':')
            c->i++;
        else {
            skip_space(c);
            if (c->i >= c->n || c->s[c->i] != ':')
                goto refuse;
            c->i++;
        }
        skip_space(c);
        h->array = 0;
        if (c->i < c->n && c->s[c->i] == '[') {
            if (!read_array(c, h))
                goto refuse;
        }
        else if (c->i >= c->n || c->s[c->i] != '"')
            goto refuse;  /* numbers, objects, nested arrays: the Python path */
        else if (!read_string(c, &h->value, &h->value_len, &h->escaped, &h->non_ascii))
            goto refuse;
        c->non_ascii |= h->non_ascii;
        count++;
        if (c->i < c->n && c->s[c->i] != ',' && c->s[c->i] != '}')
            skip_space(c);
        if (c->i < c->n && c->s[c->i] == ',') {
            c->i++;
            skip_space(c);
            continue;
        }
        if (c->i < c->n && c->s[c->i] == '}') {
            c->i++;
            break;
        }
        goto refuse;
    }
end:
    skip_space(c);
    if (c->i != c->n)
        goto refuse;
    c->layout = hash;
    *out = headers;
    return count;
refuse:
    PyMem_Free(headers);
    return -1;
}

/* The unescaped bytes of a string's content into buffer (at least `length` long); their length. */
static Py_ssize_t unescape(const unsigned char *s, Py_ssize_t length, char *buffer)
{
    Py_ssize_t i = 0, o = 0;
    while (i < length) {
        if (s[i] == '\\') {
            char ch = (char)s[i + 1];
            switch (ch) {
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            default: break;  /* '"' and '\\' stand for themselves; read_string let nothing else in */
            }
            buffer[o++] = ch;
            i += 2;
        }
        else
            buffer[o++] = (char)s[i++];
    }
    return o;
}

/* A str of UTF-8 bytes known to be well formed; ASCII is copied without a second look. */
static PyObject *text_from(const char *s, Py_ssize_t length, int non_ascii)
{
    PyObject *text;
    if (non_ascii)
        return PyUnicode_DecodeUTF8(s, length, "strict");
    text = PyUnicode_New(length, 127);
    if (text)
        memcpy(PyUnicode_1BYTE_DATA(text), s, length);
    return text;
}

static PyObject *value_of(const unsigned char *s, const Header *h, char *scratch)
{
    if (h->array) {  /* a list of str, as orjson gives it */
        PyObject *items = PyList_New(0);
        Cursor c;
        if (!items)
            return NULL;
        c.s = s;
        c.n = h->value + h->value_len - 1;  /* up to the ']' */
        c.i = h->value + 1;
        c.non_ascii = 0;
        c.layout = 0;
        while (c.i < c.n) {
            Header item;
            PyObject *text;
            int failed;
            item.array = 0;
            if (!read_string(&c, &item.value, &item.value_len, &item.escaped, &item.non_ascii)) {
                Py_DECREF(items);  /* cannot happen: read_array took this text */
                PyErr_SetString(PyExc_ValueError, "array header changed under the split");
                return NULL;
            }
            c.i++;  /* the ',' (or the end) */
            text = value_of(s, &item, scratch);
            failed = !text || PyList_Append(items, text) < 0;
            Py_XDECREF(text);
            if (failed) {
                Py_DECREF(items);
                return NULL;
            }
        }
        return items;
    }
    if (!h->escaped)
        return text_from((const char *)s + h->value, h->value_len, h->non_ascii);
    return text_from(scratch, unescape(s + h->value, h->value_len, scratch), h->non_ascii);
}

/* Whether a value holding '=' may hold "secret=..." (one of the lowercase ASCII hints, ASCII case
 * ignored): then the record builder's masking must see it. */
static int may_hold_secret(const unsigned char *s, Py_ssize_t length, char escaped, PyObject *hints, char *scratch)
{
    Py_ssize_t size = escaped ? unescape(s, length, scratch) : length;
    Py_ssize_t count = PyTuple_GET_SIZE(hints);
    if (!escaped)
        memcpy(scratch, s, length);
    for (Py_ssize_t i = 0; i < size; i++)
        if (scratch[i] >= 'A' && scratch[i] <= 'Z')
            scratch[i] = (char)(scratch[i] - 'A' + 'a');
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *hint = PyTuple_GET_ITEM(hints, k);
        Py_ssize_t hint_length = PyBytes_GET_SIZE(hint);
        if (hint_length == 0 || (hint_length <= size && memmem(scratch, size, PyBytes_AS_STRING(hint), hint_length)))
            return 1;
    }
    return 0;
}

static char *append(char *o, const void *data, Py_ssize_t length)
{
    memcpy(o, data, length);
    return o + length;
}

/* The layout as bytes: each key after a '"' (which no key this path takes holds). */
static PyObject *layout_of(const unsigned char *s, const Header *parsed, Py_ssize_t count)
{
    Py_ssize_t size = 0;
    PyObject *layout;
    char *o;
    for (Py_ssize_t k = 0; k < count; k++)
        size += 1 + parsed[k].key_len;
    layout = PyBytes_FromStringAndSize(NULL, size);
    if (!layout)
        return NULL;
    o = PyBytes_AS_STRING(layout);
    for (Py_ssize_t k = 0; k < count; k++) {
        *o++ = '"';
        o = append(o, s + parsed[k].key, parsed[k].key_len);
    }
    return layout;
}

/* Whether the event's keys are exactly those of a plan's layout. */
static int same_layout(const unsigned char *s, const Header *parsed, Py_ssize_t count, PyObject *layout)
{
    const char *l = PyBytes_AS_STRING(layout);
    Py_ssize_t left = PyBytes_GET_SIZE(layout);
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t length = parsed[k].key_len;
        if (left < 1 + length || *l != '"' || memcmp(l + 1, s + parsed[k].key, length) != 0)
            return 0;
        l += 1 + length;
        left -= 1 + length;
    }
    return left == 0;
}

static PyObject *split(PyObject *module, PyObject *args)
{
    PyObject *text, *plans, *hints, *hash = NULL, *headers = NULL, *details = NULL, *result = NULL;
    PyObject *plan, *flags_object, *keys;
    int want_details;
    const unsigned char *s, *flags;
    Py_ssize_t n, count, largest = 0, details_size = 2;
    Header *parsed = NULL;
    char *scratch = NULL, *buffer = NULL, *o = NULL;
    Cursor c;

    if (!PyArg_ParseTuple(args, "OO!Op:split", &text, &PyDict_Type, &plans, &hints, &want_details))
        return NULL;
    if (hints != Py_None && !PyTuple_Check(hints)) {
        PyErr_SetString(PyExc_TypeError, "hints: a tuple of bytes or None");
        return NULL;
    }
    if (hints != Py_None)
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(hints); k++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(hints, k))) {
                PyErr_SetString(PyExc_TypeError, "hints: a tuple of bytes or None");
                return NULL;
            }
    if (PyUnicode_Check(text)) {
        /* mod_python3 hands a str; one that holds lone surrogates (bytes that were not UTF-8) takes
         * the Python path */
        s = (const unsigned char *)PyUnicode_AsUTF8AndSize(text, &n);
        if (!s) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    else if (PyBytes_Check(text)) {
        s = (const unsigned char *)PyBytes_AS_STRING(text);
        n = PyBytes_GET_SIZE(text);
    }
    else
        Py_RETURN_NONE;

    c.s = s;
    c.n = n;
    c.i = 0;
    c.non_ascii = 0;
    c.layout = 0;
    count = read_headers(&c, &parsed);
    if (count == -2)
        return PyErr_NoMemory();
    if (count < 0)
        Py_RETURN_NONE;

    hash = PyLong_FromUnsignedLongLong(c.layout);
    if (!hash)
        goto done;
    plan = PyDict_GetItemWithError(plans, hash);
    if (!plan && PyErr_Occurred())
        goto done;
    if (!plan || !PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != 3
        || !PyBytes_Check(PyTuple_GET_ITEM(plan, 0))
        || !same_layout(s, parsed, count, PyTuple_GET_ITEM(plan, 0))) {
        /* a layout not seen before (or another behind the same hash): the caller plans it */
        PyObject *new_layout = layout_of(s, parsed, count);
        if (new_layout) {
            result = PyTuple_Pack(3, Py_None, new_layout, hash);
            Py_DECREF(new_layout);
        }
        goto done;
    }
    flags_object = PyTuple_GET_ITEM(plan, 1);
    keys = PyTuple_GET_ITEM(plan, 2);
    if (!PyBytes_Check(flags_object) || PyBytes_GET_SIZE(flags_object) != count
        || !PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) != count) {
        result = none();  /* a layout the Python path keeps (a repeated variable name) */
        goto done;
    }
    flags = (const unsigned char *)PyBytes_AS_STRING(flags_object);

    for (Py_ssize_t k = 0; k < count; k++) {
        Header *h = &parsed[k];
        if (h->value_len > largest)
            largest = h->value_len;
        if (h->variable)
            details_size += 6 + h->key_len - PREFIX_LEN + (h->value_len > MASK_LEN ? h->value_len : MASK_LEN);
    }
    scratch = PyMem_Malloc(largest + 1);
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    if (want_details) {
        buffer = PyMem_Malloc(details_size);
        if (!buffer) {
            PyErr_NoMemory();
            goto done;
        }
        o = buffer;
        *o++ = '{';
    }
    headers = new_dict(count);
    if (!headers)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        Header *h = &parsed[k];
        PyObject *key = PyTuple_GET_ITEM(keys, k), *value;
        int failed;
        if (h->variable && want_details) {
            if (!(flags[k] & PLAN_SECRET) && (hints == Py_None || PyTuple_GET_SIZE(hints))
                && memchr(s + h->value, '=', h->value_len)
                && (hints == Py_None || may_hold_secret(s + h->value, h->value_len, h->escaped, hints, scratch))) {
                result = none();  /* "secret=value" inside: masked by the Python path */
                goto done;
            }
            if (o != buffer + 1)
                *o++ = ',';
            *o++ = '"';
            if (flags[k] & PLAN_SECRET) {
                o = append(o, s + h->key + PREFIX_LEN, h->key_len - PREFIX_LEN);
                o = append(o, "\":\"" MASK "\"", sizeof("\":\"" MASK "\"") - 1);
            }
            else if (h->array) {
                o = append(o, s + h->key + PREFIX_LEN, h->key_len - PREFIX_LEN);
                o = append(o, "\":", 2);
                o = append(o, s + h->value, h->value_len);
            }
            else if (h->value == h->key + h->key_len + 3) {  /* name":"value" as it stands */
                o = append(o, s + h->key + PREFIX_LEN, h->value + h->value_len + 1 - h->key - PREFIX_LEN);
            }
            else {
                o = append(o, s + h->key + PREFIX_LEN, h->key_len - PREFIX_LEN);
                o = append(o, "\":\"", 3);
                o = append(o, s + h->value, h->value_len);
                *o++ = '"';
            }
        }
        if (!(flags[k] & PLAN_READ) || !PyUnicode_Check(key))
            continue;
        value = value_of(s, h, scratch);
        failed = !value || PyDict_SetItem(headers, key, value) < 0;
        Py_XDECREF(value);
        if (failed)
            goto done;
    }
    if (want_details) {
        *o++ = '}';
        details = text_from(buffer, o - buffer, c.non_ascii);
        if (!details)
            goto done;
    }
    else
        details = none();
    result = PyTuple_Pack(3, headers, hash, details);
done:
    PyMem_Free(parsed);
    PyMem_Free(scratch);
    PyMem_Free(buffer);
    Py_XDECREF(hash);
    Py_XDECREF(headers);
    Py_XDECREF(details);
    return result;
}

/* ---- columns(): the record builder's standard columns and plain fields ----------------------------
 *
 * RecordBuilder._columns and _finish's test, in C, for a headers dict (the split's, or a decoded
 * event's). It mirrors the Python code line for line: each column is the first of its sources that is
 * not empty, or the last source's value when none is (Python's `or`); a channel variable is
 * variable_<name>, else a header <name> (channel.variable). Numbers take to_number's own fast case
 * here and call to_number for anything else, so every odd value gets Python's answer. A value that is
 * not a str (a hand-made event, an array header among those read) returns None: the Python path.
 * tests/test_hangup_split.py compares the two on every event it generates.
 */

enum {
    /* headers */
    H_CREATED, H_ANSWERED, H_HUNG_UP, H_EVENT_DATE, H_OTHER_TYPE, H_OTHER_LEG, H_CALL_UUID, H_DIRECTION,
    H_CID_NAME, H_CID_NUMBER, H_CALLEE_NUMBER, H_DESTINATION, H_CONTEXT, H_CHANNEL_NAME, H_HANGUP_CAUSE,
    H_SWITCHNAME, H_HOSTNAME, H_CORE_UUID,
    /* channel variables: each is two keys, variable_<name> at V_x and <name> at V_x + 1 */
    V_START = H_CORE_UUID + 1, V_ANSWER = V_START + 2, V_END = V_ANSWER + 2, V_DURATION = V_END + 2,
    V_BILLSEC = V_DURATION + 2, V_ORIGINATOR = V_BILLSEC + 2, V_CALL_UUID = V_ORIGINATOR + 2,
    V_DIRECTION = V_CALL_UUID + 2, V_ACCOUNT = V_DIRECTION + 2, V_GATEWAY = V_ACCOUNT + 2,
    V_DIALED_USER = V_GATEWAY + 2, V_USER_NAME = V_DIALED_USER + 2, V_CID_NAME = V_USER_NAME + 2,
    V_CID_NUMBER = V_CID_NAME + 2, V_CALLEE_NUMBER = V_CID_NUMBER + 2, V_DESTINATION = V_CALLEE_NUMBER + 2,
    V_CONTEXT = V_DESTINATION + 2, V_CHANNEL_NAME = V_CONTEXT + 2, V_BRIDGE_UUID = V_CHANNEL_NAME + 2,
    V_LAST_BRIDGE_TO = V_BRIDGE_UUID + 2, V_CALL_SOURCE = V_LAST_BRIDGE_TO + 2, V_SOURCE_NAME = V_CALL_SOURCE + 2,
    V_SOURCE_NUMBER = V_SOURCE_NAME + 2, V_DIAL_NUMBER = V_SOURCE_NUMBER + 2, V_LINE_GROUP = V_DIAL_NUMBER + 2,
    V_HANGUP_CAUSE = V_LINE_GROUP + 2, V_ORIGINATED_LEGS = V_HANGUP_CAUSE + 2,
    V_PRESENCE_ID = V_ORIGINATED_LEGS + 2,
    KEY_COUNT = V_PRESENCE_ID + 2
};

static const char *const key_names[KEY_COUNT] = {
    "Caller-Channel-Created-Time", "Caller-Channel-Answered-Time", "Caller-Channel-Hangup-Time",
    "Event-Date-Timestamp", "Other-Type", "Other-Leg-Unique-ID", "Channel-Call-UUID", "Call-Direction",
    "Caller-Caller-ID-Name", "Caller-Caller-ID-Number", "Caller-Callee-ID-Number", "Caller-Destination-Number",
    "Caller-Context", "Channel-Name", "Hangup-Cause", "FreeSWITCH-Switchname", "FreeSWITCH-Hostname", "Core-UUID",
    PREFIX "start_epoch", "start_epoch", PREFIX "answer_epoch", "answer_epoch", PREFIX "end_epoch", "end_epoch",
    PREFIX "duration", "duration", PREFIX "billsec", "billsec", PREFIX "originator", "originator",
    PREFIX "call_uuid", "call_uuid", PREFIX "direction", "direction", PREFIX "account", "account",
    PREFIX "sip_gateway_name", "sip_gateway_name", PREFIX "dialed_user", "dialed_user",
    PREFIX "user_name", "user_name", PREFIX "caller_id_name", "caller_id_name",
    PREFIX "caller_id_number", "caller_id_number", PREFIX "callee_id_number", "callee_id_number",
    PREFIX "destination_number", "destination_number", PREFIX "context", "context",
    PREFIX "channel_name", "channel_name", PREFIX "bridge_uuid", "bridge_uuid",
    PREFIX "last_bridge_to", "last_bridge_to", PREFIX "call_source", "call_source",
    PREFIX "source_name", "source_name", PREFIX "source_number", "source_number",
    PREFIX "dial_number", "dial_number", PREFIX "cti_line_group_name", "cti_line_group_name",
    PREFIX "hangup_cause", "hangup_cause", PREFIX "originated_legs", "originated_legs",
    PREFIX "presence_id", "presence_id",
};

/* The record's standard columns, in record.RecordBuilder._columns' order. */
enum {
    C_UUID, C_LEG, C_CALL_UUID, C_DIRECTION, C_ACCOUNT, C_CID_NAME, C_CID_NUMBER, C_CALLEE_NUMBER, C_DESTINATION,
    C_CONTEXT, C_CHANNEL_NAME, C_ORIGINATOR, C_BRIDGE_UUID, C_CALL_SOURCE, C_SOURCE_NAME, C_SOURCE_NUMBER,
    C_DIAL_NUMBER, C_LINE_GROUP, C_START, C_ANSWER, C_END, C_DURATION, C_BILLSEC, C_HANGUP_CAUSE, C_SWITCHNAME,
    C_CORE_UUID, COLUMN_COUNT
};

static const char *const column_names[COLUMN_COUNT] = {
    "uuid", "leg", "call_uuid", "direction", "account", "caller_id_name", "caller_id_number", "callee_id_number",
    "destination_number", "context", "channel_name", "originator", "bridge_uuid", "call_source", "source_name",
    "source_number", "dial_number", "cti_line_group_name", "start_epoch", "answer_epoch", "end_epoch", "duration",
    "billsec", "hangup_cause", "switchname", "core_uuid",
};

static PyObject *keys[KEY_COUNT], *columns_keys[COLUMN_COUNT], *leg_a, *leg_b, *originator_text, *mask_text;
static PyObject *million, *zero;

/* The longest value the record builder leaves alone without a closer look (schema.SHORT_LIMIT). */
#define SHORT_LIMIT 64

/* Kinds of a fields entry's column (record._as_kind): not a standard column, an integer one, a text one. */
#define KIND_NONE 0
#define KIND_INT 1
#define KIND_TEXT 2

/* A sentinel: the event holds something only the Python path handles. */
static PyObject not_here_object;
#define NOT_HERE (&not_here_object)

/* headers[key] as channel.header gives it (borrowed; NULL for missing or None, or an error the
 * caller finds with PyErr_Occurred), or NOT_HERE. */
static PyObject *header_of(PyObject *headers, int key)
{
    PyObject *value = PyDict_GetItemWithError(headers, keys[key]);
    if (!value || value == Py_None)
        return NULL;
    return PyUnicode_Check(value) ? value : NOT_HERE;
}

/* headers[key], else headers[name], a None value taken for a missing one (borrowed; NULL for
 * neither, or an error the caller finds with PyErr_Occurred): channel.variable's lookup, and a plain
 * fields entry's. */
static PyObject *either_key(PyObject *headers, PyObject *key, PyObject *name)
{
    PyObject *value = PyDict_GetItemWithError(headers, key);
    if (!value && PyErr_Occurred())
        return NULL;
    if (!value || value == Py_None)
        value = PyDict_GetItemWithError(headers, name);
    return value == Py_None ? NULL : value;
}

/* channel.variable: variable_<name>, else <name> (borrowed; NULL for neither, or an error), or NOT_HERE. */
static PyObject *variable_of(PyObject *headers, int key)
{
    PyObject *value = either_key(headers, keys[key], keys[key + 1]);
    if (!value)
        return NULL;
    return PyUnicode_Check(value) ? value : NOT_HERE;
}

static int truthy_text(PyObject *text)
{
    return text && PyUnicode_GET_LENGTH(text) > 0;
}

/* Python's `a or b` over text found (NULL: None): a when it is not empty, else b. */
#define EITHER(a, b) (truthy_text(a) ? (a) : (b))
#define CHECK(value) do { if ((value) == NOT_HERE) goto python; } while (0)

/* fields.to_number: its own fast case (ASCII digits, shorter than 19) here, the rest by calling it. */
static PyObject *number_of(PyObject *text, PyObject *to_number)
{
    if (!text)
        Py_RETURN_NONE;
    if (PyUnicode_Check(text) && PyUnicode_IS_ASCII(text)) {
        Py_ssize_t length = PyUnicode_GET_LENGTH(text);
        const Py_UCS1 *digits = PyUnicode_1BYTE_DATA(text);
        if (length >= 1 && length < 19) {
            long long number = 0;
            Py_ssize_t k = 0;
            for (; k < length && digits[k] >= '0' && digits[k] <= '9'; k++)
                number = number * 10 + (digits[k] - '0');
            if (k == length)
                return PyLong_FromLongLong(number);
        }
    }
    return PyObject_CallOneArg(to_number, text);
}

static int truthy_number(PyObject *number)
{
    return number != Py_None && PyObject_IsTrue(number) == 1;
}

/* record._int64 for a difference of two ints: the number, or None beyond a signed 64-bit column. */
static PyObject *difference(PyObject *end, PyObject *start)
{
    int overflow = 0;
    PyObject *found = PyNumber_Subtract(end, start);
    if (!found)
        return NULL;
    PyLong_AsLongLongAndOverflow(found, &overflow);
    if (overflow) {
        Py_DECREF(found);
        Py_RETURN_NONE;
    }
    return found;
}

/* record._seconds: a microsecond header as whole seconds (new reference; None when it is not an int). */
static PyObject *seconds_of(PyObject *micro_text, PyObject *to_number)
{
    PyObject *micro = number_of(micro_text, to_number), *seconds;
    if (!micro)
        return NULL;
    if (!PyLong_Check(micro)) {
        Py_DECREF(micro);
        Py_RETURN_NONE;
    }
    seconds = PyNumber_FloorDivide(micro, million);
    Py_DECREF(micro);
    return seconds;
}

/* record._epoch: a *_epoch variable if it is an int, else the microsecond header's seconds. */
static PyObject *epoch_of(PyObject *variable_text, PyObject *micro_text, PyObject *to_number)
{
    PyObject *seconds = number_of(variable_text, to_number);
    if (!seconds || PyLong_Check(seconds))
        return seconds;
    Py_DECREF(seconds);
    return seconds_of(micro_text, to_number);
}

/* The duration and billsec columns: the variable if it is an int, else end - since when both are set
 * (record._int64), else `otherwise` (new reference). */
static PyObject *elapsed(PyObject *variable_text, PyObject *end, PyObject *since, PyObject *otherwise,
                         PyObject *to_number)
{
    PyObject *seconds = number_of(variable_text, to_number);
    if (!seconds || PyLong_Check(seconds))
        return seconds;
    Py_DECREF(seconds);
    if (truthy_number(end) && truthy_number(since))
        return difference(end, since);
    Py_INCREF(otherwise);
    return otherwise;
}

/* record._as_kind (new reference). */
static PyObject *as_kind(PyObject *value, int kind, PyObject *to_number)
{
    if (kind == KIND_INT) {
        PyObject *number;
        int overflow = 0;
        if (PyUnicode_Check(value))
            number = number_of(value, to_number);
        else {
            number = value;
            Py_INCREF(number);
        }
        if (!number)
            return NULL;
        if (PyFloat_Check(number)) {
            PyObject *whole = PyNumber_Long(number);
            Py_DECREF(number);
            if (!whole)
                return NULL;
            number = whole;
        }
        if (PyLong_Check(number)) {
            PyLong_AsLongLongAndOverflow(number, &overflow);
            if (!overflow)
                return number;
        }
        Py_DECREF(number);
        Py_RETURN_NONE;
    }
    if (kind == KIND_TEXT && (PyLong_Check(value) || PyFloat_Check(value)))
        return PyObject_Str(value);
    Py_INCREF(value);
    return value;
}

/* Sets record[name] = value, stealing value (NULL: an error already raised). */
static int set_column(PyObject *record, PyObject *name, PyObject *value)
{
    int failed;
    if (!value)
        return -1;
    failed = PyDict_SetItem(record, name, value);
    Py_DECREF(value);
    return failed;
}

static PyObject *text_or_none(PyObject *text)
{
    PyObject *value = text ? text : Py_None;
    Py_INCREF(value);
    return value;
}

/* _finish's test: every str value (exactly str) is ASCII, without NUL or '=', at most SHORT_LIMIT long. */
static int plain_record(PyObject *record)
{
    Py_ssize_t position = 0;
    PyObject *name, *value;
    while (PyDict_Next(record, &position, &name, &value)) {
        Py_ssize_t length;
        const char *data;
        if (!PyUnicode_CheckExact(value))
            continue;
        if (!PyUnicode_IS_ASCII(value))
            return 0;
        length = PyUnicode_GET_LENGTH(value);
        data = (const char *)PyUnicode_1BYTE_DATA(value);
        if (length > SHORT_LIMIT || memchr(data, '\0', length) || memchr(data, '=', length))
            return 0;
    }
    return 1;
}

static PyObject *columns(PyObject *module, PyObject *args)
{
    PyObject *headers, *uuid, *to_number, *fields;
    PyObject *record = NULL, *start = NULL, *answer = NULL, *end = NULL, *duration = NULL, *billsec = NULL;
    PyObject *result = NULL, *originator, *text[COLUMN_COUNT];
    PyObject *v[KEY_COUNT];
    long masked = 0;
    int b_leg;

    if (!PyArg_ParseTuple(args, "O!U(OO!):columns", &PyDict_Type, &headers, &uuid, &to_number, &PyTuple_Type,
                          &fields))
        return NULL;

    /* every lookup _columns makes, in its order (none waits on a value found: see _read_variables) */
    for (int k = 0; k < KEY_COUNT; k += k < V_START ? 1 : 2) {
        if (k == V_ORIGINATED_LEGS) {  /* a list on most a-legs: only whether it is there counts */
            v[k] = either_key(headers, keys[k], keys[k + 1]);
            if (!v[k] && PyErr_Occurred())
                goto done;
            continue;
        }
        v[k] = k < V_START ? header_of(headers, k) : variable_of(headers, k);
        CHECK(v[k]);
        if (!v[k] && PyErr_Occurred())  /* a key of the dict whose comparison with a str raised */
            goto done;
    }

    start = epoch_of(v[V_START], v[H_CREATED], to_number);
    if (!start)
        goto done;
    answer = epoch_of(v[V_ANSWER], v[H_ANSWERED], to_number);
    if (!answer)
        goto done;
    if (!truthy_number(answer)) {  /* `or None` */
        Py_DECREF(answer);
        answer = Py_None;
        Py_INCREF(answer);
    }
    end = epoch_of(v[V_END], v[H_HUNG_UP], to_number);
    if (!end)
        goto done;
    if (!truthy_number(end)) {
        Py_DECREF(end);
        end = seconds_of(v[H_EVENT_DATE], to_number);
        if (!end)
            goto done;
    }
    duration = elapsed(v[V_DURATION], end, start, Py_None, to_number);
    if (!duration)
        goto done;
    billsec = elapsed(v[V_BILLSEC], end, answer, zero, to_number);
    if (!billsec)
        goto done;
    originator = v[V_ORIGINATOR];
    if (!truthy_text(originator) && v[H_OTHER_TYPE]
        && PyUnicode_Compare(v[H_OTHER_TYPE], originator_text) == 0)
        originator = v[H_OTHER_LEG];
    if (PyErr_Occurred())
        goto done;
    b_leg = truthy_text(originator);

    text[C_CALL_UUID] = EITHER(v[H_CALL_UUID], v[V_CALL_UUID]);
    text[C_DIRECTION] = EITHER(v[V_DIRECTION], v[H_DIRECTION]);
    {  /* record._account: account, sip_gateway_name, then the dialled or the authenticated user by leg
        * (a leg the switch dialled: not an inbound one); a dialled leg that dialled out itself takes
        * its user from presence_id, in Python (rare: an agent's attended transfer) */
        int dialled = b_leg && !(truthy_text(text[C_DIRECTION])
                                 && PyUnicode_CompareWithASCIIString(text[C_DIRECTION], "inbound") == 0);
        PyObject *first = dialled ? v[V_DIALED_USER] : v[V_USER_NAME];
        PyObject *second = dialled ? v[V_USER_NAME] : v[V_DIALED_USER];
        PyObject *found = EITHER(v[V_ACCOUNT], v[V_GATEWAY]);
        PyObject *originated = v[V_ORIGINATED_LEGS];
        if (!truthy_text(found) && dialled && truthy_text(v[V_PRESENCE_ID]) && originated
            && (!PyUnicode_Check(originated) || PyUnicode_GET_LENGTH(originated) > 0))
            goto python;
        text[C_ACCOUNT] = truthy_text(found) ? found : EITHER(first, second);
    }
    text[C_CID_NAME] = EITHER(v[H_CID_NAME], v[V_CID_NAME]);
    text[C_CID_NUMBER] = EITHER(v[H_CID_NUMBER], v[V_CID_NUMBER]);
    text[C_CALLEE_NUMBER] = EITHER(v[H_CALLEE_NUMBER], v[V_CALLEE_NUMBER]);
    text[C_DESTINATION] = EITHER(v[H_DESTINATION], v[V_DESTINATION]);
    text[C_CONTEXT] = EITHER(v[H_CONTEXT], v[V_CONTEXT]);
    text[C_CHANNEL_NAME] = EITHER(v[H_CHANNEL_NAME], v[V_CHANNEL_NAME]);
    text[C_ORIGINATOR] = b_leg ? originator : NULL;
    text[C_BRIDGE_UUID] = EITHER(v[V_BRIDGE_UUID], v[V_LAST_BRIDGE_TO]);
    text[C_CALL_SOURCE] = v[V_CALL_SOURCE];
    text[C_SOURCE_NAME] = v[V_SOURCE_NAME];
    text[C_SOURCE_NUMBER] = v[V_SOURCE_NUMBER];
    text[C_DIAL_NUMBER] = v[V_DIAL_NUMBER];
    text[C_LINE_GROUP] = v[V_LINE_GROUP];
    text[C_HANGUP_CAUSE] = EITHER(v[V_HANGUP_CAUSE], v[H_HANGUP_CAUSE]);
    text[C_SWITCHNAME] = EITHER(v[H_SWITCHNAME], v[H_HOSTNAME]);
    text[C_CORE_UUID] = v[H_CORE_UUID];

    record = new_dict(COLUMN_COUNT + PyTuple_GET_SIZE(fields));
    if (!record)
        goto done;
    for (int column = 0; column < COLUMN_COUNT; column++) {
        PyObject *value;
        switch (column) {
        case C_UUID: value = uuid; break;
        case C_LEG: value = b_leg ? leg_b : leg_a; break;
        case C_START: value = start; break;
        case C_ANSWER: value = answer; break;
        case C_END: value = end; break;
        case C_DURATION: value = duration; break;
        case C_BILLSEC: value = billsec; break;
        default: value = text[column] ? text[column] : Py_None; break;
        }
        if (PyDict_SetItem(record, columns_keys[column], value) < 0)
            goto done;
    }

    /* fields: (column, kind, key, name, secret, numeric) per entry, key None for a template (its
     * column is placed here, with None, and the caller evaluates it) */
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(fields); k++) {
        PyObject *entry = PyTuple_GET_ITEM(fields, k), *column, *key, *name, *value, *found;
        long kind;
        int secret, numeric;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 6 || !PyUnicode_Check(PyTuple_GET_ITEM(entry, 0))
            || !PyLong_Check(PyTuple_GET_ITEM(entry, 1))) {
            PyErr_SetString(PyExc_TypeError, "fields: (column, kind, key, name, secret, numeric) per entry");
            goto done;
        }
        column = PyTuple_GET_ITEM(entry, 0);
        kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        key = PyTuple_GET_ITEM(entry, 2);
        name = PyTuple_GET_ITEM(entry, 3);
        secret = PyTuple_GET_ITEM(entry, 4) == Py_True;
        numeric = PyTuple_GET_ITEM(entry, 5) == Py_True;
        if (key == Py_None) {
            if (!PyDict_SetDefault(record, column, Py_None))
                goto done;
            continue;
        }
        value = either_key(headers, key, name);
        if (!value && PyErr_Occurred())
            goto done;
        if (value) {
            if (secret) {
                masked++;
                value = mask_text;
            }
            else if (!PyUnicode_CheckExact(value))
                goto python;
        }
        if (numeric)
            found = number_of(value, to_number);
        else
            found = text_or_none(value);
        if (!found)
            goto done;
        if (kind != KIND_NONE) {
            PyObject *kept = as_kind(found, kind, to_number);
            Py_DECREF(found);
            found = kept;
        }
        if (set_column(record, column, found) < 0)
            goto done;
    }
    result = Py_BuildValue("(OOOlO)", record, start, end, masked, plain_record(record) ? Py_True : Py_False);
    goto done;
python:
    result = none();
done:
    Py_XDECREF(record);
    Py_XDECREF(start);
    Py_XDECREF(answer);
    Py_XDECREF(end);
    Py_XDECREF(duration);
    Py_XDECREF(billsec);
    return result;
}

PyDoc_STRVAR(columns_doc,
"columns(headers, uuid, (to_number, fields)) -> None | (record, start, end, masked, plain)\n\n"
"RecordBuilder._columns for a dict of headers: the record's standard columns and fields, its start\n"
"and end times, how many secret fields were masked, and whether every text value passes _finish's\n"
"test (ASCII, no NUL or '=', at most 64 characters). `fields`: (column, kind, key, name, secret,\n"
"numeric) per entry (kind 0: not a standard column, 1: an integer one, 2: a text one; key None: a\n"
"template, placed as None for the caller to fill). None: a value only the Python path handles.");

PyDoc_STRVAR(split_doc,
"split(text, plans, hints, details) -> None | (headers, layout_hash, details) | (None, layout, layout_hash)\n\n"
"A serialized event (str or UTF-8 bytes) as the headers the record builder reads and its channel\n"
"variables as `details` JSON text (None when `details` is false).\n"
"`plans` maps a layout hash to (layout, flags, keys): layout is each key after a '\"', flags one byte\n"
"per header (1: a secret variable, stored as ***; 2: a header the builder reads), keys one str per\n"
"header (the dict's key). An event whose layout is not in `plans` gives (None, layout, layout_hash);\n"
"a plan whose flags are not bytes of one per header sends the layout to the Python path.\n"
"`hints`: lowercase ASCII bytes whose presence in a variable holding '=' sends the event to the\n"
"Python path (None: any '='; (): none). None: take the Python path.");

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS, split_doc},
    {"columns", columns, METH_VARARGS, columns_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fs_cdr._hangup",
    "Split a serialized hangup event without a Python object per channel variable; build its columns.", -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hangup(void)
{
    for (int k = 0; k < KEY_COUNT; k++)
        if (!(keys[k] = PyUnicode_InternFromString(key_names[k])))
            return NULL;
    for (int k = 0; k < COLUMN_COUNT; k++)
        if (!(columns_keys[k] = PyUnicode_InternFromString(column_names[k])))
            return NULL;
    if (!(leg_a = PyUnicode_InternFromString("a")) || !(leg_b = PyUnicode_InternFromString("b"))
        || !(originator_text = PyUnicode_InternFromString("originator"))
        || !(mask_text = PyUnicode_InternFromString(MASK)) || !(million = PyLong_FromLong(1000000))
        || !(zero = PyLong_FromLong(0)))
        return NULL;
    return PyModule_Create(&module);
}
