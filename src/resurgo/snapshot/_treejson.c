/* resurgo.snapshot._treejson: the canonical bytes of a tree, written and read in C.
 *
 * encode(nodes, version) -> bytes | None
 * decode(data, node_class, types, version) -> [Node] | None (see "decoding" below)
 *
 * Exactly what model.encode_tree writes in Python: the nodes sorted by raw
 * name, each as the canonical JSON object model._node_json builds (fields in
 * sorted key order, defaults left out), joined into
 * {"nodes":[...],"v":version}. A backup encodes every directory it saves,
 * and in Python that was ~3.8 us of interpreter work per node with the GIL
 * held; here ~1.2 us, most of it reading the node's attributes.
 *
 * It returns None for anything it does not write itself, and the caller then
 * encodes the tree in Python, which also raises the errors: a name that is
 * not a valid entry name, two nodes with one name, holes (sparse files),
 * a user, group or error that is not plain UTF-8 (lone surrogates), a value
 * of an unexpected type, an integer beyond 64 bits (signed, or unsigned
 * when positive). Tests compare both
 * encoders byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *buf;
    size_t len, cap;
    int failed; /* out of memory */
} Out;

static int grow(Out *o, size_t more)
{
    if (o->failed)
        return -1;
    if (o->len + more <= o->cap)
        return 0;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more)
        cap *= 2;
    char *b = realloc(o->buf, cap);
    if (b == NULL) {
        o->failed = 1;
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

static void put(Out *o, const char *s, size_t n)
{
    if (grow(o, n) == 0) {
        memcpy(o->buf + o->len, s, n);
        o->len += n;
    }
}

#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

static void put_i64(Out *o, long long v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    put(o, tmp, (size_t)n);
}

/* A JSON string of UTF-8 text, escaped as json.encoder.encode_basestring
 * does: '"' and '\\', and control characters below 0x20 (\b \f \n \r \t, the
 * others as \u00XX in lowercase hex); everything else, non-ASCII included,
 * as it is. */
static void put_string(Out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    PUTS(o, "\"");
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(o, s + start, i - start);
        start = i + 1;
        switch (c) {
        case '"': PUTS(o, "\\\""); break;
        case '\\': PUTS(o, "\\\\"); break;
        case '\b': PUTS(o, "\\b"); break;
        case '\f': PUTS(o, "\\f"); break;
        case '\n': PUTS(o, "\\n"); break;
        case '\r': PUTS(o, "\\r"); break;
        case '\t': PUTS(o, "\\t"); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(o, u, 6);
        }
        }
    }
    put(o, s + start, n - start);
    PUTS(o, "\"");
}

static void put_hex(Out *o, const unsigned char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (grow(o, 2 * n) != 0)
        return;
    char *d = o->buf + o->len;
    for (size_t i = 0; i < n; i++) {
        d[2 * i] = hex[s[i] >> 4];
        d[2 * i + 1] = hex[s[i] & 15];
    }
    o->len += 2 * n;
}

static void put_b64(Out *o, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (grow(o, 4 * ((n + 2) / 3)) != 0)
        return;
    char *d = o->buf + o->len;
    size_t i = 0, j = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        d[j++] = tab[v >> 18];
        d[j++] = tab[(v >> 12) & 63];
        d[j++] = tab[(v >> 6) & 63];
        d[j++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        d[j++] = tab[v >> 18];
        d[j++] = tab[(v >> 12) & 63];
        d[j++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        d[j++] = '=';
    }
    o->len += j;
}

/* Whether s[0:n] is text Python decodes as strict UTF-8. */
static int is_utf8(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80)
        i++;
    if (i == n)
        return 1;
    PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
    if (u == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(u);
    return 1;
}

/* ``"key":"text"`` for bytes that are UTF-8, else ``"key_b64":"base64"``
 * (model._json_bytes). 0, or -1 when value is not bytes. */
static int put_bytes_field(Out *o, const char *key, PyObject *value)
{
    if (!PyBytes_Check(value))
        return -1;
    const char *s = PyBytes_AS_STRING(value);
    Py_ssize_t n = PyBytes_GET_SIZE(value);
    PUTS(o, "\"");
    put(o, key, strlen(key));
    if (is_utf8(s, n)) {
        PUTS(o, "\":");
        put_string(o, s, (size_t)n);
    } else {
        PUTS(o, "_b64\":\"");
        put_b64(o, (const unsigned char *)s, (size_t)n);
        PUTS(o, "\"");
    }
    return 0;
}

/* ``"key":"text"`` for a str that encodes as UTF-8 as it is (model._text
 * leaves it unchanged); -1 otherwise (not a str, or lone surrogates). */
static int put_text_field(Out *o, const char *key, PyObject *value)
{
    if (!PyUnicode_Check(value))
        return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(value, &n);
    if (s == NULL) {
        PyErr_Clear();
        return -1;
    }
    PUTS(o, "\"");
    put(o, key, strlen(key));
    PUTS(o, "\":");
    put_string(o, s, (size_t)n);
    return 0;
}

/* The interned attribute names of a Node, in field order. */
enum {
    A_NAME, A_TYPE, A_MODE, A_UID, A_GID, A_USER, A_GROUP, A_MTIME, A_ATIME, A_CTIME, A_SIZE,
    A_INODE, A_DEVICE, A_NLINK, A_RDEV, A_LINKTARGET, A_XATTRS, A_CONTENT, A_HOLES, A_SUBTREE,
    A_ERROR, A_COUNT
};
static const char *attr_names[A_COUNT] = {
    "name", "type", "mode", "uid", "gid", "user", "group", "mtime_ns", "atime_ns", "ctime_ns",
    "size", "inode", "device_id", "nlink", "rdev", "linktarget", "xattrs", "content", "holes",
    "subtree", "error",
};
static PyObject *attrs[A_COUNT];
static PyObject *value_str; /* "value" */

/* An int field: its decimal digits into tmp (at least 24 bytes); their
 * count, 0 for the value ``skip`` (left out), -1 when it is not an int or
 * does not fit in 64 bits (signed, or unsigned when positive). */
static int int_digits(PyObject *v, long long skip, char *tmp)
{
    if (!PyLong_Check(v))
        return -1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        return snprintf(tmp, 24, "%llu", u);
    }
    if (overflow < 0)
        return -1;
    if (x == skip)
        return 0;
    return snprintf(tmp, 24, "%lld", x);
}

typedef struct {
    PyObject *node;
    const char *name;
    Py_ssize_t len;
} Named;

static int by_name(const void *a, const void *b)
{
    const Named *x = a, *y = b;
    Py_ssize_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, (size_t)n);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* One node's canonical object (model._node_json); -1 to leave the tree to Python. */
static int put_node(Out *o, PyObject *node)
{
    PyObject *v[A_COUNT] = {NULL};
    int rc = -1;
    for (int i = 0; i < A_COUNT; i++) {
        v[i] = PyObject_GetAttr(node, attrs[i]);
        if (v[i] == NULL) {
            PyErr_Clear();
            goto done;
        }
    }
    /* holes (sparse files) are left to Python. */
    if (!PyList_Check(v[A_HOLES]) || PyList_GET_SIZE(v[A_HOLES]) != 0)
        goto done;
    if (!PyList_Check(v[A_CONTENT]) || !PyDict_Check(v[A_XATTRS]))
        goto done;
    int first = 1;
#define SEP() do { if (!first) PUTS(o, ","); first = 0; } while (0)
#define INT(idx, key, skip)                                          \
    do {                                                             \
        char d_[24];                                                 \
        int n_ = int_digits(v[idx], (skip), d_);                     \
        if (n_ < 0)                                                  \
            goto done;                                               \
        if (n_ > 0) {                                                \
            SEP();                                                   \
            PUTS(o, "\"" key "\":");                                 \
            put(o, d_, (size_t)n_);                                  \
        }                                                            \
    } while (0)
#define TEXT(idx, key)                                               \
    do {                                                             \
        if (v[idx] != Py_None) {                                     \
            SEP();                                                   \
            if (put_text_field(o, key, v[idx]) < 0)                  \
                goto done;                                           \
        }                                                            \
    } while (0)

    INT(A_ATIME, "atime_ns", 0);
    Py_ssize_t nc = PyList_GET_SIZE(v[A_CONTENT]);
    if (nc) {
        SEP();
        PUTS(o, "\"content\":[");
        for (Py_ssize_t i = 0; i < nc; i++) {
            PyObject *b = PyList_GET_ITEM(v[A_CONTENT], i);
            if (!PyBytes_Check(b))
                goto done;
            if (i)
                PUTS(o, ",");
            PUTS(o, "\"");
            put_hex(o, (const unsigned char *)PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
            PUTS(o, "\"");
        }
        PUTS(o, "]");
    }
    INT(A_CTIME, "ctime_ns", 0);
    INT(A_DEVICE, "device_id", 0);
    TEXT(A_ERROR, "error");
    INT(A_GID, "gid", 0);
    TEXT(A_GROUP, "group");
    INT(A_INODE, "inode", 0);
    if (v[A_LINKTARGET] != Py_None) {
        SEP();
        if (put_bytes_field(o, "linktarget", v[A_LINKTARGET]) < 0)
            goto done;
    }
    INT(A_MODE, "mode", 0);
    INT(A_MTIME, "mtime_ns", 0);
    SEP();
    if (put_bytes_field(o, "name", v[A_NAME]) < 0)
        goto done;
    INT(A_NLINK, "nlink", 1);
    INT(A_RDEV, "rdev", 0);
    INT(A_SIZE, "size", 0);
    if (v[A_SUBTREE] != Py_None) {
        if (!PyBytes_Check(v[A_SUBTREE]))
            goto done;
        SEP();
        PUTS(o, "\"subtree\":\"");
        put_hex(o, (const unsigned char *)PyBytes_AS_STRING(v[A_SUBTREE]),
                (size_t)PyBytes_GET_SIZE(v[A_SUBTREE]));
        PUTS(o, "\"");
    }
    {
        /* node.type.value, written as it is (an ASCII word). */
        PyObject *tv = PyObject_GetAttr(v[A_TYPE], value_str);
        if (tv == NULL) {
            PyErr_Clear();
            goto done;
        }
        Py_ssize_t tn;
        const char *ts = PyUnicode_Check(tv) ? PyUnicode_AsUTF8AndSize(tv, &tn) : NULL;
        if (ts == NULL) {
            PyErr_Clear();
            Py_DECREF(tv);
            goto done;
        }
        SEP();
        PUTS(o, "\"type\":\"");
        put(o, ts, (size_t)tn);
        PUTS(o, "\"");
        Py_DECREF(tv);
    }
    INT(A_UID, "uid", 0);
    TEXT(A_USER, "user");
    if (PyDict_GET_SIZE(v[A_XATTRS])) {
        PyObject *names = PyDict_Keys(v[A_XATTRS]);
        if (names == NULL || PyList_Sort(names) < 0) {
            PyErr_Clear();
            Py_XDECREF(names);
            goto done;
        }
        SEP();
        PUTS(o, "\"xattrs\":[");
        int ok = 1;
        for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(names); i++) {
            PyObject *xname = PyList_GET_ITEM(names, i);
            PyObject *xval = PyDict_GetItemWithError(v[A_XATTRS], xname);
            if (xval == NULL || !PyBytes_Check(xval)) {
                PyErr_Clear();
                ok = 0;
                break;
            }
            if (i)
                PUTS(o, ",");
            PUTS(o, "{");
            if (put_bytes_field(o, "name", xname) < 0) {
                ok = 0;
                break;
            }
            PUTS(o, ",\"value\":\"");
            put_b64(o, (const unsigned char *)PyBytes_AS_STRING(xval), (size_t)PyBytes_GET_SIZE(xval));
            PUTS(o, "\"}");
        }
        Py_DECREF(names);
        if (!ok)
            goto done;
        PUTS(o, "]");
    }
#undef SEP
#undef INT
#undef TEXT
    rc = 0;
done:
    for (int i = 0; i < A_COUNT; i++)
        Py_XDECREF(v[i]);
    return rc;
}

static PyObject *encode(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *nodes;
    long long version;
    if (!PyArg_ParseTuple(args, "O!L", &PyList_Type, &nodes, &version))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(nodes);
    Named *named = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Named));
    if (named == NULL)
        return PyErr_NoMemory();
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    Out o = {NULL, 0, 0, 0};
    int fallback = 0;
    for (; got < n; got++) {
        PyObject *node = PyList_GET_ITEM(nodes, got);
        PyObject *name = PyObject_GetAttr(node, attrs[A_NAME]);
        if (name == NULL || !PyBytes_Check(name)) {
            PyErr_Clear();
            Py_XDECREF(name);
            fallback = 1;
            break;
        }
        named[got].node = node;
        named[got].name = PyBytes_AS_STRING(name);
        named[got].len = PyBytes_GET_SIZE(name);
        /* The node holds its name: a borrowed pointer into it stays valid
         * while the list holds the node (nothing here releases the GIL). */
        Py_DECREF(name);
        const char *s = named[got].name;
        Py_ssize_t len = named[got].len;
        if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.') ||
            memchr(s, '/', (size_t)len) != NULL || memchr(s, '\0', (size_t)len) != NULL) {
            fallback = 1; /* Python raises the error */
            break;
        }
    }
    if (!fallback) {
        qsort(named, (size_t)n, sizeof(Named), by_name);
        for (Py_ssize_t i = 1; i < n; i++)
            if (by_name(&named[i - 1], &named[i]) == 0)
                fallback = 1; /* a duplicate name: Python raises the error */
    }
    if (!fallback) {
        PUTS(&o, "{\"nodes\":[");
        for (Py_ssize_t i = 0; i < n && !fallback; i++) {
            if (i)
                PUTS(&o, ",");
            PUTS(&o, "{");
            if (put_node(&o, named[i].node) < 0)
                fallback = 1;
            PUTS(&o, "}");
        }
        PUTS(&o, "],\"v\":");
        put_i64(&o, version);
        PUTS(&o, "}");
    }
    if (o.failed)
        PyErr_NoMemory();
    else if (fallback)
        result = Py_NewRef(Py_None);
    else
        result = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
    free(o.buf);
    PyMem_Free(named);
    return result;
}


/* ------------------------------------------------------------ decoding */

/* decode(data, node_class, types, version) -> [Node] | None
 *
 * The nodes of a tree in the canonical form encode writes, as Node objects
 * (``node_class``; ``types`` maps each type's name to its NodeType), or None
 * for anything else: model.decode_tree then decodes in Python, which also
 * names the errors. Python's decoding was ~5.8 us per node, with the GIL
 * held, for every parent tree a backup compares a changed directory with.
 *
 * Only a subset is parsed: no whitespace, no escape in a string, no name or
 * link target in base64, no extended attributes, no holes, blob IDs in
 * lowercase hex, integers within 64 bits; the rest is left to Python. What
 * it returns is what model.decode_tree returns in Python for the same bytes,
 * so every rule of that decoder is checked here too: the texts are strict
 * UTF-8 (Python decodes the whole tree as such), no field twice, the ranges
 * of the integers, which fields each type may have, and the names valid and
 * in strictly ascending order (Python sorts the nodes and refuses a name
 * twice). A tree in another order of fields, or with a default written out,
 * decodes to the same nodes either way. tests/snapshot/test_model.py
 * compares both decoders, on damaged and non-canonical trees too.
 * (The caller used to encode the nodes again and require the same bytes:
 * ~40 % of the decoding's cost, for every tree a check or a backup reads.) */

typedef struct {
    const char *p, *end;
} In;

static int lit(In *in, const char *s, size_t n)
{
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, s, n) != 0)
        return -1;
    in->p += n;
    return 0;
}

#define LIT(in, s) lit((in), (s), sizeof(s) - 1)

/* A string without escapes or control characters: its bytes (not checked
 * for UTF-8). -1 for anything else. */
static int str(In *in, const char **s, size_t *n)
{
    if (in->p >= in->end || *in->p != '"')
        return -1;
    const char *start = ++in->p;
    while (in->p < in->end) {
        unsigned char c = (unsigned char)*in->p;
        if (c == '"') {
            *s = start;
            *n = (size_t)(in->p - start);
            in->p++;
            return 0;
        }
        if (c == '\\' || c < 0x20)
            return -1;
        in->p++;
    }
    return -1;
}

/* A decimal integer without sign (or with '-' when ``sign``), into *u (the
 * magnitude) and *neg; -1 beyond 64 bits or when not an integer. */
static int num(In *in, int sign, unsigned long long *u, int *neg)
{
    *neg = 0;
    if (sign && in->p < in->end && *in->p == '-') {
        *neg = 1;
        in->p++;
    }
    const char *start = in->p;
    unsigned long long v = 0;
    while (in->p < in->end && *in->p >= '0' && *in->p <= '9') {
        unsigned d = (unsigned)(*in->p - '0');
        if (v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        in->p++;
    }
    if (in->p == start || (in->p - start > 1 && *start == '0'))
        return -1;
    if (in->p < in->end && (*in->p == '.' || *in->p == 'e' || *in->p == 'E'))
        return -1;
    *u = v;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A blob ID: 64 lowercase hex digits, as bytes. NULL (no error set) otherwise. */
static PyObject *blob_id(In *in)
{
    const char *s;
    size_t n;
    if (str(in, &s, &n) < 0 || n != 64)
        return NULL;
    unsigned char raw[32];
    for (int i = 0; i < 32; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return NULL;
        raw[i] = (unsigned char)(hi << 4 | lo);
    }
    return PyBytes_FromStringAndSize((const char *)raw, 32);
}

/* The int fields of a node: key, Node argument index, maximum; times are signed. */
typedef struct {
    const char *key;
    int arg;
    unsigned long long max;
    int sign;
} IntField;

static const IntField int_fields[] = {
    {"atime_ns", A_ATIME, 0, 1}, {"ctime_ns", A_CTIME, 0, 1}, {"device_id", A_DEVICE, ULLONG_MAX, 0},
    {"gid", A_GID, 0xFFFFFFFFull, 0}, {"inode", A_INODE, ULLONG_MAX, 0}, {"mode", A_MODE, 07777, 0},
    {"mtime_ns", A_MTIME, 0, 1}, {"nlink", A_NLINK, ULLONG_MAX, 0}, {"rdev", A_RDEV, ULLONG_MAX, 0},
    {"size", A_SIZE, ULLONG_MAX, 0}, {"uid", A_UID, 0xFFFFFFFFull, 0},
};

static const char *type_names[] = {"file", "dir", "symlink", "blockdev", "chardev", "fifo", "socket"};
enum { T_FILE, T_DIR, T_SYMLINK, T_COUNT = 7 };

/* Text as a str (strict UTF-8); NULL, no error set, when it is not. */
static PyObject *text(const char *s, size_t n)
{
    PyObject *u = PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "strict");
    if (u == NULL)
        PyErr_Clear();
    return u;
}

/* Whether the name s[0:n] sorts after prev[0:prev_n] (bytes, as Python
 * compares them): the nodes must come in strictly ascending name order, as
 * model.decode_tree would sort them, with no name twice. No previous name
 * (prev NULL): the first node. */
static int after(const char *prev, size_t prev_n, const char *s, size_t n)
{
    if (prev == NULL)
        return 1;
    int c = memcmp(prev, s, prev_n < n ? prev_n : n);
    return c < 0 || (c == 0 && prev_n < n);
}

/* One node, or NULL: with an error set (out of memory, a failing Node
 * call), or without (leave the tree to Python). */
static PyObject *decode_node(In *in, PyObject *node_class, PyObject *types, const char **prev,
                             size_t *prev_n)
{
    PyObject *v[A_COUNT] = {NULL};
    PyObject *node = NULL;
    int type = -1;
    if (LIT(in, "{") < 0)
        return NULL;
    int first = 1;
    while (in->p < in->end && *in->p != '}') {
        if (!first && LIT(in, ",") < 0)
            goto done;
        first = 0;
        const char *key;
        size_t kn;
        if (str(in, &key, &kn) < 0 || LIT(in, ":") < 0)
            goto done;
        int handled = 0;
        for (size_t i = 0; i < sizeof int_fields / sizeof int_fields[0]; i++) {
            const IntField *f = &int_fields[i];
            if (strlen(f->key) != kn || memcmp(f->key, key, kn) != 0)
                continue;
            handled = 1;
            unsigned long long u;
            int neg;
            if (v[f->arg] != NULL || num(in, f->sign, &u, &neg) < 0)
                goto done;
            if (f->sign) {
                if (u > (unsigned long long)LLONG_MAX + (unsigned long long)neg)
                    goto done;
                long long x = neg ? (long long)(0 - u) : (long long)u;
                v[f->arg] = PyLong_FromLongLong(x);
            } else {
                if (u > f->max)
                    goto done;
                v[f->arg] = PyLong_FromUnsignedLongLong(u);
            }
            if (v[f->arg] == NULL)
                goto done;
            break;
        }
        if (handled)
            continue;
        const char *s;
        size_t n;
        int slot = -1;
        if (kn == 4 && memcmp(key, "name", 4) == 0) {
            if (v[A_NAME] != NULL || str(in, &s, &n) < 0 || n == 0 || (n == 1 && s[0] == '.') ||
                (n == 2 && s[0] == '.' && s[1] == '.') || memchr(s, '/', n) != NULL ||
                !is_utf8(s, (Py_ssize_t)n) || !after(*prev, *prev_n, s, n))
                goto done;
            *prev = s;
            *prev_n = n;
            v[A_NAME] = PyBytes_FromStringAndSize(s, (Py_ssize_t)n);
            if (v[A_NAME] == NULL)
                goto done;
        } else if (kn == 4 && memcmp(key, "type", 4) == 0) {
            if (v[A_TYPE] != NULL || str(in, &s, &n) < 0)
                goto done;
            for (int t = 0; t < T_COUNT; t++)
                if (strlen(type_names[t]) == n && memcmp(type_names[t], s, n) == 0)
                    type = t;
            if (type < 0)
                goto done;
            v[A_TYPE] = PyDict_GetItemString(types, type_names[type]);
            if (v[A_TYPE] == NULL)
                goto done;
            Py_INCREF(v[A_TYPE]);
        } else if ((kn == 4 && memcmp(key, "user", 4) == 0 && (slot = A_USER) >= 0) ||
                   (kn == 5 && memcmp(key, "group", 5) == 0 && (slot = A_GROUP) >= 0) ||
                   (kn == 5 && memcmp(key, "error", 5) == 0 && (slot = A_ERROR) >= 0)) {
            if (v[slot] != NULL || str(in, &s, &n) < 0 || (v[slot] = text(s, n)) == NULL)
                goto done;
        } else if (kn == 10 && memcmp(key, "linktarget", 10) == 0) {
            if (v[A_LINKTARGET] != NULL || str(in, &s, &n) < 0 || n == 0 || !is_utf8(s, (Py_ssize_t)n))
                goto done;
            v[A_LINKTARGET] = PyBytes_FromStringAndSize(s, (Py_ssize_t)n);
            if (v[A_LINKTARGET] == NULL)
                goto done;
        } else if (kn == 7 && memcmp(key, "subtree", 7) == 0) {
            if (v[A_SUBTREE] != NULL || (v[A_SUBTREE] = blob_id(in)) == NULL)
                goto done;
        } else if (kn == 7 && memcmp(key, "content", 7) == 0) {
            if (v[A_CONTENT] != NULL || LIT(in, "[") < 0 || (v[A_CONTENT] = PyList_New(0)) == NULL)
                goto done;
            int more = 0;
            while (in->p < in->end && (more || *in->p != ']')) {
                PyObject *id = blob_id(in);
                int failed = id == NULL || PyList_Append(v[A_CONTENT], id) < 0;
                Py_XDECREF(id);
                if (failed)
                    goto done;
                more = in->p < in->end && *in->p == ',';
                if (more)
                    in->p++;
            }
            if (LIT(in, "]") < 0)
                goto done;
        } else {
            goto done; /* xattrs, holes, a *_b64 field, or not a node field */
        }
    }
    if (LIT(in, "}") < 0 || v[A_NAME] == NULL || type < 0)
        goto done;
    /* The decoder's rules on which fields each type may have. */
    if ((type == T_SYMLINK) != (v[A_LINKTARGET] != NULL) ||
        (type != T_FILE && v[A_CONTENT] != NULL && PyList_GET_SIZE(v[A_CONTENT]) > 0) ||
        (type != T_DIR && v[A_SUBTREE] != NULL) ||
        (type == T_DIR && v[A_SUBTREE] == NULL && v[A_ERROR] == NULL))
        goto done;
    static const long long defaults[A_COUNT] = {[A_NLINK] = 1};
    for (int i = 0; i < A_COUNT; i++) {
        if (v[i] != NULL)
            continue;
        switch (i) {
        case A_MODE: case A_UID: case A_GID: case A_MTIME: case A_ATIME: case A_CTIME:
        case A_SIZE: case A_INODE: case A_DEVICE: case A_NLINK: case A_RDEV:
            v[i] = PyLong_FromLongLong(defaults[i]);
            break;
        case A_XATTRS:
            v[i] = PyDict_New();
            break;
        case A_CONTENT: case A_HOLES:
            v[i] = PyList_New(0);
            break;
        default:
            v[i] = Py_NewRef(Py_None);
        }
        if (v[i] == NULL)
            goto done;
    }
    node = PyObject_Vectorcall(node_class, v, A_COUNT, NULL);
done:
    for (int i = 0; i < A_COUNT; i++)
        Py_XDECREF(v[i]);
    return node;
}

static PyObject *decode(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer data;
    PyObject *node_class, *types;
    long long version;
    if (!PyArg_ParseTuple(args, "y*OO!L", &data, &node_class, &PyDict_Type, &types, &version))
        return NULL;
    In in = {data.buf, (const char *)data.buf + data.len};
    PyObject *nodes = PyList_New(0);
    int ok = nodes != NULL && LIT(&in, "{\"nodes\":[") == 0;
    int more = 0;
    const char *prev = NULL; /* the previous node's name */
    size_t prev_n = 0;
    while (ok && in.p < in.end && (more || *in.p != ']')) {
        PyObject *node = decode_node(&in, node_class, types, &prev, &prev_n);
        ok = node != NULL && PyList_Append(nodes, node) == 0;
        Py_XDECREF(node);
        more = ok && in.p < in.end && *in.p == ',';
        if (more)
            in.p++;
    }
    if (ok) {
        char tail[32];
        int n = snprintf(tail, sizeof tail, "],\"v\":%lld}", version);
        ok = lit(&in, tail, (size_t)n) == 0 && in.p == in.end;
    }
    PyBuffer_Release(&data);
    if (ok)
        return nodes;
    Py_XDECREF(nodes);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(nodes, version) -> bytes | None: the canonical bytes of a tree, as "
     "model.encode_tree writes them; None to leave the tree to Python."},
    {"decode", decode, METH_VARARGS,
     "decode(data, node_class, types, version) -> [Node] | None: the nodes of a tree, as "
     "model.decode_tree decodes them in Python; None to leave the tree to Python."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "resurgo.snapshot._treejson",
    "The canonical bytes of a tree, written and read in C (see model.encode_tree, decode_tree).", -1, methods,
};

PyMODINIT_FUNC PyInit__treejson(void)
{
    for (int i = 0; i < A_COUNT; i++) {
        attrs[i] = PyUnicode_InternFromString(attr_names[i]);
        if (attrs[i] == NULL)
            return NULL;
    }
    value_str = PyUnicode_InternFromString("value");
    if (value_str == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
