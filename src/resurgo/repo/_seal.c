/* resurgo.repo._seal: blob IDs and envelopes for a window of small blobs, in
 * one call each without the GIL (see batch.py, which owns the Python side).
 *
 * A backup reads a directory's small files a window at a time
 * (snapshot/_dirscan.c, read_small). Hashing, compressing and sealing each
 * file in Python cost three calls per file that each released and retook
 * the GIL: with two threads that is a hand-off, a futex wake and a context
 * switch per call, and the interpreter's work between the calls held the
 * other core idle. Here one call hashes every file of the window, and one
 * seals the new ones, so the other thread runs Python meanwhile.
 *
 * The same file opens small envelopes (open_small): a backup reads back the
 * parent tree of every directory that changed, and crypto.py's three calls
 * per envelope each handed the GIL over. And it opens the blobs of a range a
 * restore read (open_blobs), checking each against its length and ID, or
 * only checks them (check_blobs, for check --read-data).
 *
 * Nothing here decides anything: Python chooses each blob's compression
 * level and dictionary (crypto.Sealer.plan), and which blobs are new. What
 * this file owns is producing exactly what crypto.py would:
 *  - a blob ID is keyed BLAKE3-256 (the vendored reference C, _blake3/);
 *  - an envelope is header(4) || nonce(12) || AES-256-GCM(body) || tag(16),
 *    the header (version, cipher, compression, kind), the AEAD's associated
 *    data header || context, the nonce 96 bits from getrandom(2);
 *  - the body is the zstd frame (content size written, no checksum, no
 *    dictionary ID; with a dictionary, after its 8-byte tag) when it is
 *    shorter than n - n/64, else the plaintext itself.
 * Frames with a dictionary attach it (ZSTD_dictForceAttach): for inputs over
 * 16 KiB zstd would otherwise copy the digested dictionary's tables (2.1 MiB
 * at level 4) into the context for every blob.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_c_forceAttachDict */
#include <openssl/evp.h>
#include <zstd.h>

#include "_blake3/blake3.h"

/* crypto.py's constants: the envelope's layout and header values. */
#define HEADER_LEN 4
#define NONCE_LEN 12
#define TAG_LEN 16
#define DICT_TAG_LEN 8
#define FORMAT_VERSION 1
#define FORMAT_VERSION_DICT 2
#define CIPHER_AES256GCM 1
#define COMP_NONE 0
#define COMP_ZSTD 1
#define COMP_ZSTD_DICT 2
#define MAX_CONTEXT 64
#define ID_LEN 32

/* Work this small is done holding the GIL. Releasing it is cheap, but taking
 * it back waits for the other thread to let go of it, up to the interpreter's
 * switch interval (5 ms) when that thread runs Python: far longer than hashing
 * or sealing a directory's tree (~6 KB: ~40 us). An incremental backup's
 * main thread saved 449 trees in 0.39 s that way (docs/benchmarks.md). */
#define HASH_HOLDS_GIL_UPTO (64 * 1024)
#define SEAL_HOLDS_GIL_UPTO (16 * 1024)
#define DICT_WORK 4

/* The GIL released for work over ``limit`` bytes (NULL: still held). */
static PyThreadState *release_above(size_t work, size_t limit) {
    return work > limit ? PyEval_SaveThread() : NULL;
}

static void retake(PyThreadState *saved) {
    if (saved != NULL)
        PyEval_RestoreThread(saved);
}

/* ------------------------------------------------------------ dictionaries */

typedef struct {
    PyObject_HEAD
    ZSTD_CDict *cdict;
    int level;
} CDictObject;

static void cdict_dealloc(CDictObject *self) {
    ZSTD_freeCDict(self->cdict);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *cdict_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "level", NULL};
    Py_buffer data;
    int level;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*i", kwlist, &data, &level))
        return NULL;
    CDictObject *self = (CDictObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        Py_BEGIN_ALLOW_THREADS
        self->cdict = ZSTD_createCDict(data.buf, (size_t)data.len, level);
        Py_END_ALLOW_THREADS
        self->level = level;
        if (self->cdict == NULL) {
            Py_DECREF(self);
            self = NULL;
            PyErr_SetString(PyExc_ValueError, "zstd could not digest the dictionary");
        }
    }
    PyBuffer_Release(&data);
    return (PyObject *)self;
}

static PyTypeObject CDictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resurgo.repo._seal.CDict",
    .tp_doc = PyDoc_STR("CDict(data, level): a zstd dictionary digested for compression at level."),
    .tp_basicsize = sizeof(CDictObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = cdict_new,
    .tp_dealloc = (destructor)cdict_dealloc,
};

typedef struct {
    PyObject_HEAD
    ZSTD_DDict *ddict;
} DDictObject;

static void ddict_dealloc(DDictObject *self) {
    ZSTD_freeDDict(self->ddict);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ddict_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", NULL};
    Py_buffer data;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &data))
        return NULL;
    DDictObject *self = (DDictObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        Py_BEGIN_ALLOW_THREADS
        self->ddict = ZSTD_createDDict(data.buf, (size_t)data.len);
        Py_END_ALLOW_THREADS
        if (self->ddict == NULL) {
            Py_DECREF(self);
            self = NULL;
            PyErr_SetString(PyExc_ValueError, "zstd could not digest the dictionary");
        }
    }
    PyBuffer_Release(&data);
    return (PyObject *)self;
}

static PyTypeObject DDictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resurgo.repo._seal.DDict",
    .tp_doc = PyDoc_STR("DDict(data): a zstd dictionary digested for decompression."),
    .tp_basicsize = sizeof(DDictObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = ddict_new,
    .tp_dealloc = (destructor)ddict_dealloc,
};

/* ------------------------------------------------------------ per-thread contexts */

/* A zstd context and a cipher context per thread, reused from call to call
 * (a fresh zstd context allocates and initialises its workspace, more than
 * compressing a small file costs), freed when the thread ends. */
typedef struct {
    ZSTD_CCtx *zstd;
    ZSTD_DCtx *unzstd; /* created on the first open_small of the thread */
    EVP_CIPHER_CTX *aead;
} Contexts;

static pthread_key_t contexts_key;
static pthread_once_t contexts_once = PTHREAD_ONCE_INIT;

static void contexts_free(void *p) {
    Contexts *c = p;
    ZSTD_freeCCtx(c->zstd);
    ZSTD_freeDCtx(c->unzstd);
    EVP_CIPHER_CTX_free(c->aead);
    free(c);
}

static void contexts_init_key(void) { (void)pthread_key_create(&contexts_key, contexts_free); }

/* This thread's contexts, or NULL when they cannot be allocated. No GIL needed. */
static Contexts *contexts(void) {
    (void)pthread_once(&contexts_once, contexts_init_key);
    Contexts *c = pthread_getspecific(contexts_key);
    if (c != NULL)
        return c;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->zstd = ZSTD_createCCtx();
    c->aead = EVP_CIPHER_CTX_new();
    if (c->zstd == NULL || c->aead == NULL || pthread_setspecific(contexts_key, c) != 0) {
        contexts_free(c);
        return NULL;
    }
    return c;
}

/* ------------------------------------------------------------ blob IDs */

typedef struct {
    Py_ssize_t offset, size;
} Span;

/* Parse ``spans`` (a list of (offset, size)) against a buffer of ``len`` bytes. */
static Span *parse_spans(PyObject *list, Py_ssize_t len, Py_ssize_t *count) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "spans must be a list of (offset, size)");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    Span *spans = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Span));
    if (spans == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(list, i);
        if (!PyArg_ParseTuple(t, "nn", &spans[i].offset, &spans[i].size)) {
            PyMem_Free(spans);
            return NULL;
        }
        if (spans[i].offset < 0 || spans[i].size < 0 || spans[i].offset > len ||
            spans[i].size > len - spans[i].offset) {
            PyErr_Format(PyExc_ValueError, "span %zd (%zd, %zd) is outside the %zd-byte buffer",
                         i, spans[i].offset, spans[i].size, len);
            PyMem_Free(spans);
            return NULL;
        }
    }
    *count = n;
    return spans;
}

static PyObject *blob_ids(PyObject *module, PyObject *args) {
    Py_buffer key, data;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "y*y*O", &key, &data, &list))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = 0;
    Span *spans = NULL;
    uint8_t *ids = NULL;
    if (key.len != BLAKE3_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "the blob-ID key is 32 bytes");
        goto done;
    }
    spans = parse_spans(list, data.len, &n);
    if (spans == NULL)
        goto done;
    ids = PyMem_Malloc((size_t)(n ? n : 1) * ID_LEN);
    if (ids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t work = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        work += (size_t)spans[i].size;
    PyThreadState *saved = release_above(work, HASH_HOLDS_GIL_UPTO);
    blake3_hasher h;
    for (Py_ssize_t i = 0; i < n; i++) {
        blake3_hasher_init_keyed(&h, key.buf);
        blake3_hasher_update(&h, (const uint8_t *)data.buf + spans[i].offset, (size_t)spans[i].size);
        blake3_hasher_finalize(&h, ids + i * ID_LEN, ID_LEN);
    }
    retake(saved);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *id = PyBytes_FromStringAndSize((const char *)ids + i * ID_LEN, ID_LEN);
        if (id == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, id);
    }
done:
    PyMem_Free(ids);
    PyMem_Free(spans);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

/* The plain (unkeyed) BLAKE3-256 of the parts of a list, one after the other:
 * what blake3.blake3() gives for their concatenation. blake3-py releases the
 * GIL for any input over ~2 KB, and a backup hashes each directory's listing
 * (ops/dircache.py), a few KB, from a scanner thread: retaking the GIL then
 * waited for the other threads. */
static PyObject *digest(PyObject *module, PyObject *list) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "digest takes a list of bytes-like objects");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(list);
    Py_buffer *views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    if (views == NULL)
        return PyErr_NoMemory();
    Py_ssize_t got = 0;
    size_t work = 0;
    PyObject *result = NULL;
    for (; got < n; got++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, got), &views[got], PyBUF_SIMPLE) < 0)
            goto done;
        work += (size_t)views[got].len;
    }
    uint8_t out[ID_LEN];
    PyThreadState *saved = release_above(work, HASH_HOLDS_GIL_UPTO);
    blake3_hasher h;
    blake3_hasher_init(&h);
    for (Py_ssize_t i = 0; i < n; i++)
        blake3_hasher_update(&h, views[i].buf, (size_t)views[i].len);
    blake3_hasher_finalize(&h, out, ID_LEN);
    retake(saved);
    result = PyBytes_FromStringAndSize((const char *)out, ID_LEN);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    return result;
}

/* ------------------------------------------------------------ sealing */

typedef struct {
    Py_ssize_t offset, size;
    uint8_t context[MAX_CONTEXT];
    size_t context_len;
    int level;                  /* 0: store the plaintext */
    const ZSTD_CDict *cdict;    /* or NULL */
    PyObject *owner;            /* the CDict object, referenced for the call */
    uint8_t tag[DICT_TAG_LEN];  /* the dictionary's tag, with cdict */
    size_t out_offset, out_len; /* where its envelope went */
} Item;

typedef struct {
    const char *what; /* NULL: no error */
    char detail[96];
} Failure;

static void fail(Failure *f, const char *what, const char *detail) {
    f->what = what;
    snprintf(f->detail, sizeof f->detail, "%s", detail ? detail : "");
}

/* Compress (when the item asks and it helps) and encrypt one blob into
 * ``out``, which has room for its worst case. Returns the envelope's length,
 * or 0 after recording a failure. No GIL. */
static size_t seal_one(Contexts *c, const uint8_t *key, int kind, const uint8_t *src,
                       Item *it, const uint8_t *nonce, uint8_t *out, size_t room, Failure *f) {
    size_t n = (size_t)it->size;
    uint8_t *body = out + HEADER_LEN + NONCE_LEN;
    size_t body_room = room - HEADER_LEN - NONCE_LEN - TAG_LEN;
    size_t body_len = n;
    int version = FORMAT_VERSION, comp = COMP_NONE;
    if (it->level != 0) {
        size_t skip = it->cdict != NULL ? DICT_TAG_LEN : 0;
        ZSTD_CCtx *z = c->zstd;
        size_t r = ZSTD_CCtx_reset(z, ZSTD_reset_session_and_parameters);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, it->level);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(z, ZSTD_c_contentSizeFlag, 1);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(z, ZSTD_c_checksumFlag, 0);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(z, ZSTD_c_dictIDFlag, 0);
        if (!ZSTD_isError(r) && it->cdict != NULL) {
            r = ZSTD_CCtx_refCDict(z, it->cdict);
            if (!ZSTD_isError(r))
                r = ZSTD_CCtx_setParameter(z, ZSTD_c_forceAttachDict, ZSTD_dictForceAttach);
        }
        if (!ZSTD_isError(r))
            r = ZSTD_compress2(z, body + skip, body_room - skip, src, n);
        if (ZSTD_isError(r)) {
            fail(f, "zstd", ZSTD_getErrorName(r));
            return 0;
        }
        /* Stored raw when compression does not help (as crypto.Sealer._encode). */
        if (r + skip < n - n / 64) {
            body_len = r + skip;
            if (it->cdict != NULL) {
                memcpy(body, it->tag, DICT_TAG_LEN);
                comp = COMP_ZSTD_DICT;
                version = FORMAT_VERSION_DICT;
            } else {
                comp = COMP_ZSTD;
            }
        }
    }
    if (comp == COMP_NONE)
        memcpy(body, src, n);
    out[0] = (uint8_t)version;
    out[1] = CIPHER_AES256GCM;
    out[2] = (uint8_t)comp;
    out[3] = (uint8_t)kind;
    memcpy(out + HEADER_LEN, nonce, NONCE_LEN);

    uint8_t aad[HEADER_LEN + MAX_CONTEXT];
    memcpy(aad, out, HEADER_LEN);
    memcpy(aad + HEADER_LEN, it->context, it->context_len);
    int len = 0, fin = 0;
    EVP_CIPHER_CTX *e = c->aead;
    if (body_len > INT_MAX ||
        EVP_EncryptInit_ex(e, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(e, NULL, &len, aad, (int)(HEADER_LEN + it->context_len)) != 1 ||
        EVP_EncryptUpdate(e, body, &len, body, (int)body_len) != 1 ||
        EVP_EncryptFinal_ex(e, body + len, &fin) != 1 ||
        (size_t)len + (size_t)fin != body_len ||
        EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_GCM_GET_TAG, TAG_LEN, body + body_len) != 1) {
        fail(f, "AES-256-GCM", "OpenSSL refused to encrypt");
        return 0;
    }
    return HEADER_LEN + NONCE_LEN + body_len + TAG_LEN;
}

static int fill_random(uint8_t *buf, size_t n) {
    while (n > 0) {
        ssize_t got = getrandom(buf, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += got;
        n -= (size_t)got;
    }
    return 0;
}

/* Parse one (offset, size, context, level, cdict or None, tag or None). */
static int parse_item(PyObject *t, Item *it, Py_ssize_t len, Py_ssize_t i) {
    Py_buffer ctx;
    PyObject *cdict, *tag;
    if (!PyArg_ParseTuple(t, "nny*iOO", &it->offset, &it->size, &ctx, &it->level, &cdict, &tag))
        return -1;
    int ok = 0;
    if (it->offset < 0 || it->size < 0 || it->offset > len || it->size > len - it->offset)
        PyErr_Format(PyExc_ValueError, "item %zd (%zd, %zd) is outside the %zd-byte buffer", i,
                     it->offset, it->size, len);
    else if ((size_t)ctx.len > MAX_CONTEXT)
        PyErr_Format(PyExc_ValueError, "item %zd: a context is at most %d bytes", i, MAX_CONTEXT);
    else if (cdict != Py_None && !PyObject_TypeCheck(cdict, &CDictType))
        PyErr_Format(PyExc_TypeError, "item %zd: the dictionary must be a CDict or None", i);
    else if (cdict != Py_None && (!PyBytes_Check(tag) || PyBytes_GET_SIZE(tag) != DICT_TAG_LEN))
        PyErr_Format(PyExc_ValueError, "item %zd: a dictionary needs its %d-byte tag", i, DICT_TAG_LEN);
    else if (cdict != Py_None && it->level != ((CDictObject *)cdict)->level)
        PyErr_Format(PyExc_ValueError, "item %zd: level %d, but the dictionary is digested for %d", i,
                     it->level, ((CDictObject *)cdict)->level);
    else
        ok = 1;
    if (ok) {
        memcpy(it->context, ctx.buf, (size_t)ctx.len);
        it->context_len = (size_t)ctx.len;
        it->cdict = cdict != Py_None ? ((CDictObject *)cdict)->cdict : NULL;
        if (it->cdict != NULL) {
            memcpy(it->tag, PyBytes_AS_STRING(tag), DICT_TAG_LEN);
            Py_INCREF(cdict);
            it->owner = cdict;
        }
    }
    PyBuffer_Release(&ctx);
    return ok ? 0 : -1;
}

static PyObject *seal(PyObject *module, PyObject *args) {
    Py_buffer key, data;
    int kind;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "y*iy*O!", &key, &kind, &data, &PyList_Type, &list))
        return NULL;
    PyObject *result = NULL, *out = NULL, *spans = NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    Item *items = NULL;
    uint8_t *nonces = NULL;
    if (key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "AES-256-GCM needs a 32-byte key");
        goto done;
    }
    if (kind < 0 || kind > 255) {
        PyErr_SetString(PyExc_ValueError, "kind must fit one byte");
        goto done;
    }
    items = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Item));
    nonces = PyMem_Malloc((size_t)(n ? n : 1) * NONCE_LEN);
    if (items == NULL || nonces == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t room = 0, work = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (parse_item(PyList_GET_ITEM(list, i), &items[i], data.len, i) < 0)
            goto done;
        /* Compressing with a dictionary costs ~4x more per byte (a 5 KB file:
         * ~40 us at level 4, holding the tables of a 1 MiB dictionary). */
        work += (size_t)items[i].size * (items[i].cdict != NULL ? DICT_WORK : 1);
        room += HEADER_LEN + NONCE_LEN + DICT_TAG_LEN + TAG_LEN +
                ZSTD_compressBound((size_t)items[i].size);
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)room);
    if (out == NULL)
        goto done;
    Failure failure = {NULL, ""};
    int random_errno = 0;
    PyThreadState *saved = release_above(work, SEAL_HOLDS_GIL_UPTO);
    Contexts *c = contexts();
    if (c == NULL) {
        fail(&failure, "memory", "no zstd or cipher context");
    } else if (fill_random(nonces, (size_t)n * NONCE_LEN) < 0) {
        random_errno = errno;
        fail(&failure, "getrandom", strerror(random_errno));
    } else {
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
        size_t pos = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            Item *it = &items[i];
            size_t worst = HEADER_LEN + NONCE_LEN + DICT_TAG_LEN + TAG_LEN +
                           ZSTD_compressBound((size_t)it->size);
            size_t got = seal_one(c, key.buf, kind, (const uint8_t *)data.buf + it->offset, it,
                                  nonces + i * NONCE_LEN, dst + pos, worst, &failure);
            if (got == 0)
                break;
            it->out_offset = pos;
            it->out_len = got;
            pos += got;
        }
        room = pos;
    }
    retake(saved);
    if (failure.what != NULL) {
        PyErr_Format(PyExc_RuntimeError, "sealing failed in %s: %s", failure.what, failure.detail);
        goto done;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)room) < 0)
        goto done;
    spans = PyList_New(n);
    for (Py_ssize_t i = 0; spans != NULL && i < n; i++) {
        PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)items[i].out_offset,
                                    (Py_ssize_t)items[i].out_len);
        if (t == NULL)
            Py_CLEAR(spans);
        else
            PyList_SET_ITEM(spans, i, t);
    }
    if (spans != NULL)
        result = PyTuple_Pack(2, out, spans);
done:
    Py_XDECREF(out);
    Py_XDECREF(spans);
    for (Py_ssize_t i = 0; items != NULL && i < n; i++)
        Py_XDECREF(items[i].owner);
    PyMem_Free(items);
    PyMem_Free(nonces);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

/* ------------------------------------------------------------ opening */

/* Plaintexts larger than this are left to crypto.py. */
#define OPEN_SMALL_MAX_PLAIN (1 << 20)

/* open_small(key, kind, envelope, context) -> bytes or None: the plaintext of a
 * small envelope without a dictionary, holding the GIL (the caller passes only
 * envelopes of a few kilobytes: directory trees, read back to be compared).
 * None for anything else or anything wrong (another version, cipher or kind,
 * a dictionary, authentication failing, a zstd frame that is not exactly one
 * frame with its size stated): crypto.Sealer.open then decides, and names the
 * error. */
/* Authenticate and decrypt the envelope e[0:n] (at least header, nonce and tag;
 * context_len <= MAX_CONTEXT) into body (n minus those bytes). 0 when the
 * tag holds, -1 otherwise. No GIL needed. */
static int decrypt_body(EVP_CIPHER_CTX *a, const uint8_t *key, const uint8_t *e, size_t n,
                        const uint8_t *context, size_t context_len, uint8_t *body) {
    size_t body_len = n - HEADER_LEN - NONCE_LEN - TAG_LEN;
    uint8_t aad[HEADER_LEN + MAX_CONTEXT];
    memcpy(aad, e, HEADER_LEN);
    memcpy(aad + HEADER_LEN, context, context_len);
    int len = 0, fin = 0;
    if (EVP_DecryptInit_ex(a, EVP_aes_256_gcm(), NULL, key, e + HEADER_LEN) != 1 ||
        EVP_DecryptUpdate(a, NULL, &len, aad, (int)(HEADER_LEN + context_len)) != 1 ||
        EVP_DecryptUpdate(a, body, &len, e + HEADER_LEN + NONCE_LEN, (int)body_len) != 1 ||
        EVP_CIPHER_CTX_ctrl(a, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(e + n - TAG_LEN)) != 1 ||
        EVP_DecryptFinal_ex(a, body + len, &fin) != 1 || (size_t)len + (size_t)fin != body_len)
        return -1;
    return 0;
}

static PyObject *open_small(PyObject *module, PyObject *args) {
    Py_buffer key, env, ctx;
    int kind;
    if (!PyArg_ParseTuple(args, "y*iy*y*", &key, &kind, &env, &ctx))
        return NULL;
    PyObject *result = NULL;
    uint8_t *body = NULL;
    const uint8_t *e = env.buf;
    size_t n = (size_t)env.len;
    if (key.len != 32) {
        PyErr_SetString(PyExc_ValueError, "AES-256-GCM needs a 32-byte key");
        goto done;
    }
    Contexts *c = contexts();
    if (c == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (c->unzstd == NULL && (c->unzstd = ZSTD_createDCtx()) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (n < HEADER_LEN + NONCE_LEN + TAG_LEN || n - HEADER_LEN - NONCE_LEN - TAG_LEN > INT_MAX ||
        (size_t)ctx.len > MAX_CONTEXT || e[0] != FORMAT_VERSION || e[1] != CIPHER_AES256GCM ||
        (e[2] != COMP_NONE && e[2] != COMP_ZSTD) || e[3] != kind)
        goto none;
    size_t body_len = n - HEADER_LEN - NONCE_LEN - TAG_LEN;
    body = PyMem_Malloc(body_len ? body_len : 1);
    if (body == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (decrypt_body(c->aead, key.buf, e, n, ctx.buf, (size_t)ctx.len, body) < 0)
        goto none;
    if (e[2] == COMP_NONE) {
        result = PyBytes_FromStringAndSize((const char *)body, (Py_ssize_t)body_len);
        goto done;
    }
    unsigned long long size = ZSTD_getFrameContentSize(body, body_len);
    if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR || size > OPEN_SMALL_MAX_PLAIN ||
        ZSTD_findFrameCompressedSize(body, body_len) != body_len)
        goto none;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (result == NULL)
        goto done;
    size_t got = ZSTD_decompressDCtx(c->unzstd, PyBytes_AS_STRING(result), (size_t)size, body, body_len);
    if (!ZSTD_isError(got) && got == size)
        goto done;
    Py_CLEAR(result);
none:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(body);
    PyBuffer_Release(&key);
    PyBuffer_Release(&env);
    PyBuffer_Release(&ctx);
    return result;
}

/* ------------------------------------------------------------ opening many blobs */

/* open_blobs: the blobs of a range read from a pack, opened and checked in one
 * call without the GIL. A restore decodes each small file's blob: through
 * crypto.py, that was two library calls holding the GIL (AES-GCM, zstd with
 * the dictionary) and one more for the ID, ~290 ms of a restore of the
 * benchmark dataset with the GIL held. Here a batch of them is authenticated,
 * decompressed and hashed while the other thread runs Python.
 *
 * A plaintext is returned only when everything is as expected: a header this
 * reads, the tag holds, one zstd frame stating its size, exactly the length
 * the index gives, and the keyed BLAKE3 of the result equal to the blob's ID.
 * Anything else gives None, and the caller opens that one through
 * crypto.Sealer.open, which says what is wrong (or succeeds, on anything
 * this does not handle). */

#define OPEN_HOLDS_GIL_UPTO (16 * 1024)
#define OPEN_BLOBS_MAX_PLAIN (16 << 20)

typedef struct {
    Py_ssize_t offset, length;
    int kind;
    const uint8_t *context;
    Py_ssize_t context_len;
    Py_ssize_t raw;
    const uint8_t *id;
    PyObject *out; /* the bytes to fill (None in check_blobs), or NULL: left to Python */
    int ok;
} Opening;

typedef struct {
    const uint8_t *tag;
    const ZSTD_DDict *ddict;
} Tagged;

/* Open item ``it`` into ``dst`` (room for its raw length); sets ``ok``. No GIL. */
static void open_one(Contexts *c, const uint8_t *key, const uint8_t *id_key, const uint8_t *data,
                     Opening *it, const Tagged *dicts, Py_ssize_t ndicts, uint8_t *body, uint8_t *dst) {
    const uint8_t *e = data + it->offset;
    size_t n = (size_t)it->length;
    if (n < HEADER_LEN + NONCE_LEN + TAG_LEN || n - HEADER_LEN - NONCE_LEN - TAG_LEN > INT_MAX ||
        (e[0] != FORMAT_VERSION && e[0] != FORMAT_VERSION_DICT) || e[1] != CIPHER_AES256GCM ||
        e[3] != it->kind)
        return;
    int comp = e[2];
    if (comp != COMP_NONE && comp != COMP_ZSTD && !(comp == COMP_ZSTD_DICT && e[0] == FORMAT_VERSION_DICT))
        return;
    if (decrypt_body(c->aead, key, e, n, it->context, (size_t)it->context_len, body) < 0)
        return;
    size_t body_len = n - HEADER_LEN - NONCE_LEN - TAG_LEN;
    size_t raw = (size_t)it->raw;
    if (comp == COMP_NONE) {
        if (body_len != raw)
            return;
        memcpy(dst, body, raw);
    } else {
        const uint8_t *frame = body;
        size_t frame_len = body_len;
        const ZSTD_DDict *ddict = NULL;
        if (comp == COMP_ZSTD_DICT) {
            if (body_len < DICT_TAG_LEN)
                return;
            for (Py_ssize_t d = 0; d < ndicts && ddict == NULL; d++)
                if (memcmp(dicts[d].tag, body, DICT_TAG_LEN) == 0)
                    ddict = dicts[d].ddict;
            if (ddict == NULL)
                return; /* a dictionary not loaded yet: Python loads it */
            frame += DICT_TAG_LEN;
            frame_len -= DICT_TAG_LEN;
        }
        if (ZSTD_getFrameContentSize(frame, frame_len) != (unsigned long long)raw ||
            ZSTD_findFrameCompressedSize(frame, frame_len) != frame_len)
            return;
        size_t got = ddict != NULL
            ? ZSTD_decompress_usingDDict(c->unzstd, dst, raw, frame, frame_len, ddict)
            : ZSTD_decompressDCtx(c->unzstd, dst, raw, frame, frame_len);
        if (ZSTD_isError(got) || got != raw)
            return;
    }
    uint8_t digest_out[ID_LEN];
    blake3_hasher h;
    blake3_hasher_init_keyed(&h, id_key);
    blake3_hasher_update(&h, dst, raw);
    blake3_hasher_finalize(&h, digest_out, ID_LEN);
    it->ok = memcmp(digest_out, it->id, ID_LEN) == 0;
}

/* open_blobs (keep: the plaintexts) and check_blobs (not kept: decompressed
 * into one scratch buffer and hashed, for check --read-data). */
static PyObject *open_or_check(PyObject *args, int keep) {
    Py_buffer key, id_key, data;
    PyObject *list, *dict_list;
    if (!PyArg_ParseTuple(args, "y*y*y*O!O!", &key, &id_key, &data, &PyList_Type, &list,
                          &PyList_Type, &dict_list))
        return NULL;
    PyObject *result = NULL, *items_ref = NULL, *dicts_ref = NULL;
    Opening *items = NULL;
    Tagged *dicts = NULL;
    uint8_t *body = NULL, *scratch = NULL;
    size_t most_raw = 0;
    Py_ssize_t n = 0, ndicts = 0;
    if (key.len != 32 || id_key.len != BLAKE3_KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "both keys are 32 bytes");
        goto done;
    }
    /* Own copies of the lists: the tuples, bytes and dictionaries parsed below
     * must outlive the call, whatever another thread does to the lists. */
    items_ref = PyList_GetSlice(list, 0, PyList_GET_SIZE(list));
    dicts_ref = PyList_GetSlice(dict_list, 0, PyList_GET_SIZE(dict_list));
    if (items_ref == NULL || dicts_ref == NULL)
        goto done;
    n = PyList_GET_SIZE(items_ref);
    ndicts = PyList_GET_SIZE(dicts_ref);
    items = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Opening));
    dicts = PyMem_Calloc((size_t)(ndicts ? ndicts : 1), sizeof(Tagged));
    if (items == NULL || dicts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t d = 0; d < ndicts; d++) {
        const char *tag;
        Py_ssize_t tag_len;
        PyObject *dd;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(dicts_ref, d), "y#O!", &tag, &tag_len, &DDictType, &dd))
            goto done;
        if (tag_len != DICT_TAG_LEN) {
            PyErr_SetString(PyExc_ValueError, "a dictionary tag is 8 bytes");
            goto done;
        }
        dicts[d].tag = (const uint8_t *)tag;
        dicts[d].ddict = ((DDictObject *)dd)->ddict;
    }
    size_t work = 0, most = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Opening *it = &items[i];
        const char *context, *id;
        Py_ssize_t id_len;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items_ref, i), "nniy#ny#", &it->offset, &it->length,
                              &it->kind, &context, &it->context_len, &it->raw, &id, &id_len))
            goto done;
        if (it->offset < 0 || it->length < 0 || it->offset > data.len || it->length > data.len - it->offset) {
            PyErr_Format(PyExc_ValueError, "item %zd is outside the data", i);
            goto done;
        }
        if (it->context_len > MAX_CONTEXT || id_len != ID_LEN || it->raw < 0) {
            PyErr_Format(PyExc_ValueError, "item %zd: bad context, ID or length", i);
            goto done;
        }
        it->context = (const uint8_t *)context;
        it->id = (const uint8_t *)id;
        if (it->raw > OPEN_BLOBS_MAX_PLAIN)
            continue; /* left to Python */
        if (keep) {
            it->out = PyBytes_FromStringAndSize(NULL, it->raw);
            if (it->out == NULL)
                goto done;
        } else {
            it->out = Py_NewRef(Py_None); /* marks the item as taken */
            if ((size_t)it->raw > most_raw)
                most_raw = (size_t)it->raw;
        }
        work += (size_t)it->length;
        if ((size_t)it->length > most)
            most = (size_t)it->length;
    }
    body = PyMem_RawMalloc(most ? most : 1);
    scratch = keep ? NULL : PyMem_RawMalloc(most_raw ? most_raw : 1);
    if (body == NULL || (!keep && scratch == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    Contexts *c = contexts();
    if (c == NULL || (c->unzstd == NULL && (c->unzstd = ZSTD_createDCtx()) == NULL)) {
        PyErr_NoMemory();
        goto done;
    }
    PyThreadState *saved = release_above(work, OPEN_HOLDS_GIL_UPTO);
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i].out != NULL)
            open_one(c, key.buf, id_key.buf, data.buf, &items[i], dicts, ndicts, body,
                     keep ? (uint8_t *)PyBytes_AS_STRING(items[i].out) : scratch);
    retake(saved);
    if (!keep) {
        result = PyBytes_FromStringAndSize(NULL, n);
        for (Py_ssize_t i = 0; result != NULL && i < n; i++)
            PyBytes_AS_STRING(result)[i] = (char)items[i].ok;
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        if (items[i].ok) {
            PyList_SET_ITEM(result, i, items[i].out);
            items[i].out = NULL;
        } else {
            PyList_SET_ITEM(result, i, Py_NewRef(Py_None));
        }
    }
done:
    for (Py_ssize_t i = 0; items != NULL && i < n; i++)
        Py_XDECREF(items[i].out);
    PyMem_RawFree(body);
    PyMem_RawFree(scratch);
    PyMem_Free(items);
    PyMem_Free(dicts);
    Py_XDECREF(items_ref);
    Py_XDECREF(dicts_ref);
    PyBuffer_Release(&key);
    PyBuffer_Release(&id_key);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *open_blobs(PyObject *module, PyObject *args) { return open_or_check(args, 1); }

static PyObject *check_blobs(PyObject *module, PyObject *args) { return open_or_check(args, 0); }

/* ------------------------------------------------------------ one message */

/* AES-256-GCM of one message (aead.py): the envelopes that do not go through
 * the batches above (a large blob, a tree or an index file read on its own)
 * and key files. cryptography's AESGCM did this, holding the GIL, and
 * importing it cost 30-80 ms of every command's start. Encrypting writes
 * ciphertext || tag; decrypting authenticates before it returns anything.
 * The GIL is released over SEAL_HOLDS_GIL_UPTO bytes: the buffers stay held
 * (Py_buffer) meanwhile. */
static int gcm_args(Py_buffer *key, Py_buffer *nonce, Py_buffer *data, Py_buffer *aad) {
    if (key->len != 32) {
        PyErr_SetString(PyExc_ValueError, "AES-256-GCM needs a 32-byte key");
        return -1;
    }
    if (nonce->len != NONCE_LEN) {
        PyErr_SetString(PyExc_ValueError, "AES-256-GCM here takes a 12-byte nonce");
        return -1;
    }
    if (data->len > INT_MAX - TAG_LEN || aad->len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "message too long for one AES-256-GCM call");
        return -1;
    }
    return 0;
}

/* Encrypt n bytes of src into out (n + TAG_LEN bytes; out may be src). 0, or -1. No GIL. */
static int gcm_seal(EVP_CIPHER_CTX *e, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                    size_t aad_len, const uint8_t *src, size_t n, uint8_t *out) {
    int len = 0, fin = 0;
    if (EVP_EncryptInit_ex(e, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(e, NULL, &len, aad, (int)aad_len) != 1 ||
        EVP_EncryptUpdate(e, out, &len, src, (int)n) != 1 ||
        EVP_EncryptFinal_ex(e, out + len, &fin) != 1 || (size_t)len + (size_t)fin != n ||
        EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_GCM_GET_TAG, TAG_LEN, out + n) != 1)
        return -1;
    return 0;
}

/* Authenticate and decrypt src (n >= TAG_LEN bytes, the tag last) into out
 * (n - TAG_LEN bytes). 0 when the tag holds, -1 otherwise. No GIL. */
static int gcm_open(EVP_CIPHER_CTX *a, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                    size_t aad_len, const uint8_t *src, size_t n, uint8_t *out) {
    size_t body = n - TAG_LEN;
    int len = 0, fin = 0;
    if (EVP_DecryptInit_ex(a, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_DecryptUpdate(a, NULL, &len, aad, (int)aad_len) != 1 ||
        EVP_DecryptUpdate(a, out, &len, src, (int)body) != 1 ||
        EVP_CIPHER_CTX_ctrl(a, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)(src + body)) != 1 ||
        EVP_DecryptFinal_ex(a, out + len, &fin) != 1 || (size_t)len + (size_t)fin != body)
        return -1;
    return 0;
}

/* Encrypt or decrypt (``decrypt``) data into out; 1 done, 0 the tag did not
 * hold (decrypting), -1 with an exception set. */
static int gcm_run(int decrypt, Py_buffer *key, Py_buffer *nonce, Py_buffer *data, Py_buffer *aad,
                   uint8_t *out) {
    Contexts *c = contexts();
    if (c == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyThreadState *saved = release_above((size_t)data->len, SEAL_HOLDS_GIL_UPTO);
    int rc = decrypt ? gcm_open(c->aead, key->buf, nonce->buf, aad->buf, (size_t)aad->len, data->buf,
                                (size_t)data->len, out)
                     : gcm_seal(c->aead, key->buf, nonce->buf, aad->buf, (size_t)aad->len, data->buf,
                                (size_t)data->len, out);
    retake(saved);
    if (rc == 0)
        return 1;
    if (decrypt)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused to encrypt");
    return -1;
}

/* gcm(decrypt, key, nonce, data, aad[, out]): without out, the result as new
 * bytes (None when decrypting fails); with out (exactly the result's length),
 * written there, and True (False when decrypting fails). */
static PyObject *gcm(PyObject *module, PyObject *args) {
    (void)module;
    int decrypt;
    Py_buffer key, nonce, data, aad, out = {0};
    if (!PyArg_ParseTuple(args, "py*y*y*y*|w*", &decrypt, &key, &nonce, &data, &aad, &out))
        return NULL;
    PyObject *result = NULL;
    if (gcm_args(&key, &nonce, &data, &aad) < 0)
        goto done;
    if (decrypt && data.len < TAG_LEN) {
        result = Py_NewRef(out.obj != NULL ? Py_False : Py_None);
        goto done;
    }
    Py_ssize_t size = decrypt ? data.len - TAG_LEN : data.len + TAG_LEN;
    if (out.obj != NULL) {
        if (out.len != size) {
            PyErr_Format(PyExc_ValueError, "the output buffer holds %zd bytes, not %zd", out.len, size);
            goto done;
        }
        int rc = gcm_run(decrypt, &key, &nonce, &data, &aad, out.buf);
        if (rc >= 0)
            result = Py_NewRef(rc ? Py_True : Py_False);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    int rc = gcm_run(decrypt, &key, &nonce, &data, &aad, (uint8_t *)PyBytes_AS_STRING(result));
    if (rc < 0)
        Py_CLEAR(result);
    else if (rc == 0)
        Py_SETREF(result, Py_NewRef(Py_None));
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    PyBuffer_Release(&aad);
    if (out.obj != NULL)
        PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"gcm", gcm, METH_VARARGS,
     PyDoc_STR("gcm(decrypt, key, nonce, data, aad[, out]) -> bytes, None or bool: AES-256-GCM of "
               "one message (ciphertext || 16-byte tag); without out the result as bytes, None when "
               "the tag does not hold; with out (exactly the result's size) written there, and "
               "whether the tag held. Without the GIL unless the message is small.")},
    {"blob_ids", blob_ids, METH_VARARGS,
     PyDoc_STR("blob_ids(key, data, spans) -> [id]: keyed BLAKE3-256 of data[offset:offset + size] "
               "for each (offset, size) of spans, without the GIL (unless there is little to hash).")},
    {"digest", digest, METH_O,
     PyDoc_STR("digest(parts) -> bytes: the BLAKE3-256 of the concatenation of a list of "
               "bytes-like objects, without the GIL (unless there is little to hash).")},
    {"seal", seal, METH_VARARGS,
     PyDoc_STR("seal(key, kind, data, items) -> (envelopes, spans): each item (offset, size, context, "
               "level, cdict, tag) of data sealed as crypto.Sealer would, without the GIL "
               "(unless there is little to seal); "
               "envelope i is envelopes[spans[i][0]:spans[i][0] + spans[i][1]].")},
    {"open_blobs", open_blobs, METH_VARARGS,
     PyDoc_STR("open_blobs(key, id_key, data, items, dicts) -> [bytes or None]: each item (offset, "
               "length, kind, context, raw_length, blob_id) of data opened and checked against "
               "its length and ID, dicts a list of (tag, DDict); None for any that does not "
               "open cleanly. Without the GIL (unless there is little to open).")},
    {"check_blobs", check_blobs, METH_VARARGS,
     PyDoc_STR("check_blobs(key, id_key, data, items, dicts) -> bytes: open_blobs without keeping "
               "the plaintexts; one byte per item, 1 when it opens cleanly with its length and ID.")},
    {"open_small", open_small, METH_VARARGS,
     PyDoc_STR("open_small(key, kind, envelope, context) -> bytes or None: the plaintext of a small "
               "envelope without a dictionary, holding the GIL; None for anything else or wrong.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "resurgo.repo._seal",
    PyDoc_STR("Blob IDs and envelopes for a window of small blobs (see resurgo.repo.batch)."), -1,
    methods,
};

PyMODINIT_FUNC PyInit__seal(void) {
    if (PyType_Ready(&CDictType) < 0 || PyType_Ready(&DDictType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "CDict", (PyObject *)&CDictType) < 0 ||
        PyModule_AddObjectRef(m, "DDict", (PyObject *)&DDictType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
