/* fs_cdr._hangup: split a serialized hangup event without a Python object per channel variable.
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

static void skip_space(Cursor *c)
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
static int read_string(Cursor *c, Py_ssize_t *start, Py_ssize_t *length, char *escaped, char *non_ascii)
{
    const unsigned char *s = c->s;
    Py_ssize_t n = c->n, i = c->i + 1;
    *start = i;
    *escaped = 0;
    *non_ascii = 0;
    while (i < n) {
        unsigned char ch;
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
        {  /* the layout hash: each key's length and 8-byte words, multiplied in */
            const unsigned char *k = c->s + h->key;
            Py_ssize_t left = h->key_len;
            hash = (hash ^ (uint64_t)left) * 0x100000001b3ULL;
            for (; left >= 8; k += 8, left -= 8) {
                uint64_t word;
                memcpy(&word, k, 8);
                hash = (hash ^ word) * 0x9E3779B97F4A7C15ULL;
                hash ^= hash >> 29;
            }
            if (left > 0) {
                uint64_t word = 0;
                while (left-- > 0)
                    word = (word << 8) | k[left];
                hash = (hash ^ word) * 0x9E3779B97F4A7C15ULL;
                hash ^= hash >> 29;
            }
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
#if PY_VERSION_HEX < 0x030D0000
    headers = _PyDict_NewPresized(count);
#else
    headers = PyDict_New();
#endif
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fs_cdr._hangup",
    "Split a serialized hangup event without a Python object per channel variable.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hangup(void)
{
    return PyModule_Create(&module);
}
