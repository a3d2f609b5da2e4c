/* resurgo.snapshot._dirscan: list an open directory and lstat its entries,
 * and read a directory's small files, without the GIL.
 *
 * The one native stage of a backup's walk (docs/backup.md, "The directory
 * cache"). A backup with a directory cache lists every directory and hashes
 * its entries' lstat fields; in Python that is ~6 us of GIL-holding work per
 * entry (a stat_result per entry, the row packed field by field), so two
 * scanner threads mostly hand the GIL to each other. Here the listing, the
 * fstatat calls, the sort and the packing of the rows all run with the GIL
 * released; Python only gets one small tuple per entry back.
 *
 * scan(fd) -> list[(name: bytes, lstat: os.stat_result, row: bytes)] | None
 *
 *   Entries of the directory open as ``fd`` (not "." or ".."), sorted by name
 *   as Python sorts bytes. ``lstat`` holds what os.lstat would return for the
 *   entry, field for field. ``row`` is exactly ``resurgo.ops.dircache.entry_row``
 *   of the entry: struct "<IIQQqqqqIIQQ" (name length, st_mode, inode, device,
 *   size, mtime, atime (0 for a directory) and ctime in ns, uid, gid, link
 *   count, rdev), then the name. Tests check both against os.lstat and entry_row.
 *
 *   None when an entry cannot be stat'ed (it vanished, access denied) or has
 *   a time that does not fit in 64 bits of nanoseconds: the caller then lists
 *   the directory in Python, which reports such entries one by one.
 *   OSError when the directory cannot be read.
 *
 * The descriptor stays open and is rewound (as os.scandir(fd) does), so the
 * caller can list it again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define ROW_FIXED 80 /* struct.calcsize("<IIQQqqqqIIQQ") */

typedef struct {
    char *name;
    size_t len;
    struct stat st;
} entry_t;

typedef enum { SCAN_OK, SCAN_FALLBACK, SCAN_ERRNO } scan_status;

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A timespec as int64 nanoseconds; 0 if it does not fit (as Python's 'q' would fail). */
static int to_ns(struct timespec ts, int64_t *out)
{
    int64_t ns;
    if (__builtin_mul_overflow((int64_t)ts.tv_sec, (int64_t)1000000000, &ns))
        return 0;
    if (__builtin_add_overflow(ns, (int64_t)ts.tv_nsec, &ns))
        return 0;
    *out = ns;
    return 1;
}

static int by_name(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static void free_entries(entry_t *entries, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(entries[i].name);
    free(entries);
}

/* List and stat, GIL released. On SCAN_ERRNO, *err holds errno. */
static scan_status list_dir(int fd, entry_t **out, size_t *out_count, int *err)
{
    size_t count = 0, cap = 64;
    entry_t *entries = malloc(cap * sizeof(entry_t));
    int dup_fd = dup(fd);
    DIR *dir = NULL;
    scan_status status = SCAN_OK;

    if (entries == NULL || dup_fd < 0) {
        *err = entries == NULL ? ENOMEM : errno;
        if (dup_fd >= 0)
            close(dup_fd);
        free(entries);
        return SCAN_ERRNO;
    }
    dir = fdopendir(dup_fd);
    if (dir == NULL) {
        *err = errno;
        close(dup_fd);
        free(entries);
        return SCAN_ERRNO;
    }
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            if (errno != 0) {
                *err = errno;
                status = SCAN_ERRNO;
            }
            break;
        }
        const char *n = d->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
            continue;
        if (count == cap) {
            entry_t *grown = realloc(entries, 2 * cap * sizeof(entry_t));
            if (grown == NULL) {
                *err = ENOMEM;
                status = SCAN_ERRNO;
                break;
            }
            entries = grown;
            cap *= 2;
        }
        entry_t *e = &entries[count];
        if (fstatat(fd, n, &e->st, AT_SYMLINK_NOFOLLOW) != 0) {
            status = SCAN_FALLBACK;
            break;
        }
        e->len = strlen(n);
        e->name = malloc(e->len ? e->len : 1);
        if (e->name == NULL) {
            *err = ENOMEM;
            status = SCAN_ERRNO;
            break;
        }
        memcpy(e->name, n, e->len);
        count++;
    }
    /* Leave the shared offset at the start for the caller (as os.scandir does). */
    rewinddir(dir);
    closedir(dir);
    if (status != SCAN_OK) {
        free_entries(entries, count);
        return status;
    }
    qsort(entries, count, sizeof(entry_t), by_name);
    *out = entries;
    *out_count = count;
    return SCAN_OK;
}

/* The signature row of one entry (see the header comment); 0 for an entry
 * whose fields Python packs differently (entry_row's decimal "wide" row): a
 * time that overflows 64 bits of ns, a device number or an id that os.lstat
 * gives as negative. */
static int fill_row(const entry_t *e, unsigned char *row)
{
    int64_t mtime, atime, ctime;
    if (!to_ns(e->st.st_mtim, &mtime) || !to_ns(e->st.st_atim, &atime)
        || !to_ns(e->st.st_ctim, &ctime))
        return 0;
    if ((long long)e->st.st_dev < 0 || (long long)e->st.st_rdev < 0
        || e->st.st_uid == (uid_t)-1 || e->st.st_gid == (gid_t)-1)
        return 0;
    put_u32(row + 0, (uint32_t)e->len);
    put_u32(row + 4, (uint32_t)e->st.st_mode);
    put_u64(row + 8, (uint64_t)e->st.st_ino);
    put_u64(row + 16, (uint64_t)e->st.st_dev);
    put_u64(row + 24, (uint64_t)(int64_t)e->st.st_size);
    put_u64(row + 32, (uint64_t)mtime);
    /* A directory's atime is not in its node, so not in its row either. */
    put_u64(row + 40, S_ISDIR(e->st.st_mode) ? 0 : (uint64_t)atime);
    put_u64(row + 48, (uint64_t)ctime);
    put_u32(row + 56, (uint32_t)e->st.st_uid);
    put_u32(row + 60, (uint32_t)e->st.st_gid);
    put_u64(row + 64, (uint64_t)e->st.st_nlink);
    put_u64(row + 72, (uint64_t)e->st.st_rdev);
    memcpy(row + ROW_FIXED, e->name, e->len);
    return 1;
}

static PyTypeObject *stat_result_type; /* os.stat_result */

/* A uid or gid as os.lstat gives it: (uid_t)-1 is -1. */
static PyObject *id_value(unsigned int v)
{
    return v == (unsigned int)-1 ? PyLong_FromLong(-1) : PyLong_FromUnsignedLong(v);
}

/* os.stat_result for ``st``, field for field as os.lstat builds it on Linux
 * (the times in ns were checked to fit in 64 bits by fill_row). */
static PyObject *stat_result(const struct stat *st)
{
    PyObject *v = PyStructSequence_New(stat_result_type);
    if (v == NULL)
        return NULL;
    const struct timespec *times[3] = {&st->st_atim, &st->st_mtim, &st->st_ctim};
    PyObject *fields[19];
    fields[0] = PyLong_FromLong((long)st->st_mode);
    fields[1] = PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino);
    fields[2] = PyLong_FromLongLong((long long)st->st_dev); /* as CPython's _PyLong_FromDev */
    fields[3] = PyLong_FromLong((long)st->st_nlink);
    fields[4] = id_value((unsigned int)st->st_uid);
    fields[5] = id_value((unsigned int)st->st_gid);
    fields[6] = PyLong_FromLongLong((long long)st->st_size);
    for (int i = 0; i < 3; i++) {
        fields[7 + i] = PyLong_FromLongLong((long long)times[i]->tv_sec);
        fields[10 + i] = PyFloat_FromDouble((double)times[i]->tv_sec + times[i]->tv_nsec * 1e-9);
        fields[13 + i] = PyLong_FromLongLong(
            (long long)times[i]->tv_sec * 1000000000LL + (long long)times[i]->tv_nsec);
    }
    fields[16] = PyLong_FromLong((long)st->st_blksize);
    fields[17] = PyLong_FromLong((long)st->st_blocks);
    fields[18] = PyLong_FromLongLong((long long)st->st_rdev);
    int failed = 0;
    for (int i = 0; i < 19; i++) {
        if (fields[i] == NULL)
            failed = 1;
        else
            PyStructSequence_SET_ITEM(v, i, fields[i]);
    }
    if (failed) {
        Py_DECREF(v); /* and with it every field that was set */
        return NULL;
    }
    return v;
}

/* scan(fd or path): with a path (bytes), the directory is opened as
 * fsmeta.open_dir_for_backup does (O_DIRECTORY, O_NOFOLLOW, O_NOATIME unless
 * that is refused with EPERM), listed and closed in the same call without the
 * GIL: opening and closing it from Python handed the GIL over twice more per
 * directory, and each retake waited for another thread. */
static PyObject *scan(PyObject *module, PyObject *arg)
{
    (void)module;
    int fd = -1;
    const char *path = NULL;
    if (PyBytes_Check(arg)) {
        path = PyBytes_AS_STRING(arg);
        if (strlen(path) != (size_t)PyBytes_GET_SIZE(arg)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            return NULL;
        }
    } else {
        long fd_long = PyLong_AsLong(arg);
        if (fd_long == -1 && PyErr_Occurred())
            return NULL;
        if (fd_long < 0 || fd_long > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "not a file descriptor");
            return NULL;
        }
        fd = (int)fd_long;
    }

    entry_t *entries = NULL;
    size_t count = 0;
    int err = 0, open_err = 0;
    scan_status status = SCAN_ERRNO;
    unsigned char *rows = NULL;
    size_t rows_len = 0;

    Py_BEGIN_ALLOW_THREADS
    if (path != NULL) {
        int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
        fd = open(path, flags | O_NOATIME);
        if (fd < 0 && errno == EPERM) /* O_NOATIME needs ownership or CAP_FOWNER */
            fd = open(path, flags);
        if (fd < 0)
            open_err = errno;
    }
    if (fd >= 0)
        status = list_dir(fd, &entries, &count, &err);
    if (path != NULL && fd >= 0)
        close(fd);
    if (status == SCAN_OK) {
        for (size_t i = 0; i < count; i++)
            rows_len += ROW_FIXED + entries[i].len;
        rows = malloc(rows_len ? rows_len : 1);
        if (rows == NULL) {
            err = ENOMEM;
            status = SCAN_ERRNO;
        } else {
            unsigned char *p = rows;
            for (size_t i = 0; i < count; i++) {
                if (!fill_row(&entries[i], p)) {
                    status = SCAN_FALLBACK;
                    break;
                }
                p += ROW_FIXED + entries[i].len;
            }
        }
    }
    Py_END_ALLOW_THREADS

    if (open_err != 0) {
        errno = open_err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, arg);
    }
    if (status != SCAN_OK) {
        free(rows);
        free_entries(entries, count); /* NULL and 0 when the listing failed */
        if (status == SCAN_FALLBACK)
            Py_RETURN_NONE;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }

    PyObject *result = PyList_New((Py_ssize_t)count);
    unsigned char *p = rows;
    for (size_t i = 0; result != NULL && i < count; i++) {
        const entry_t *e = &entries[i];
        size_t row_len = ROW_FIXED + e->len;
        PyObject *st = stat_result(&e->st);
        PyObject *item = st == NULL ? NULL : Py_BuildValue(
            "(y#Ny#)", e->name, (Py_ssize_t)e->len, st, (const char *)p, (Py_ssize_t)row_len);
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
        p += row_len;
    }
    free(rows);
    free_entries(entries, count);
    return result;
}

/* read_small: the small files of a directory, read in one call without the GIL.
 *
 * For each file (the ones a scan queued, in name order): open it as
 * fsmeta.open_for_backup does (O_NOFOLLOW, O_NONBLOCK, O_NOATIME unless that
 * is refused with EPERM), and ask for its data (POSIX_FADV_WILLNEED) so the
 * disk gets the whole batch's requests at once; then, one by one, fstat it,
 * read it in one read of size + 1 bytes, fstat it again and close it. What
 * Python did per file (seven system calls, each releasing and retaking the
 * GIL) is one call per batch. The caller (ops/backup.py) bounds the batch's
 * bytes, since every file's data is held until the call returns.
 *
 * All of the window's data goes into one bytes object, allocated before the
 * GIL is released with room for each file's listed size plus one byte: a
 * malloc'd buffer per file, copied into a bytes object per file, 48 at a
 * time, fragmented the one malloc arena (peak RSS of a million-file backup
 * 560 MiB, against 473 MiB when Python read them one by one). A file that
 * grew since it was listed is left to Python.
 */
enum { READ_OK = 0, READ_OPEN_ERROR = 1, READ_ERROR = 2, READ_REPLACED = 3, READ_FALLBACK = 4 };

typedef struct {
    const char *path;
    unsigned long long ino, dev;
    long long listed; /* the size the listing saw */
    int fd, status, err, changed;
    size_t offset, room; /* its slot in the window's buffer */
    struct stat before;
} small_t;

static int open_for_backup(const char *path)
{
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;
    int fd = open(path, flags | O_NOATIME);
    if (fd < 0 && errno == EPERM) /* O_NOATIME needs ownership or CAP_FOWNER */
        fd = open(path, flags);
    return fd;
}

/* Everything but the first open of one file, GIL released. */
static void read_one(small_t *f, long long limit, char *base)
{
    struct stat after;
    int64_t ns;
    if (fstat(f->fd, &f->before) != 0) {
        f->status = READ_FALLBACK;
        return;
    }
    const struct stat *b = &f->before;
    if (!S_ISREG(b->st_mode) || (unsigned long long)b->st_ino != f->ino
        || (unsigned long long)b->st_dev != f->dev) {
        f->status = READ_REPLACED;
        return;
    }
    /* Sparse, too large, or times Python would give as other than int64 ns:
     * the Python path (holes, a stream, its own checks). */
    if (b->st_size < 0 || b->st_size > limit
        || (b->st_size > 0 && (long long)b->st_blocks * 512 < (long long)b->st_size)
        || !to_ns(b->st_mtim, &ns) || !to_ns(b->st_ctim, &ns)) {
        f->status = READ_FALLBACK;
        return;
    }
    size_t size = (size_t)b->st_size;
    if (size + 1 > f->room) {
        f->status = READ_FALLBACK; /* grown since it was listed */
        return;
    }
    ssize_t n = read(f->fd, base + f->offset, size + 1);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        /* O_NONBLOCK, which Python clears after the open, mattered to this
         * file system after all: read it in Python. */
        f->status = READ_FALLBACK;
        return;
    }
    if (n < 0) {
        f->status = READ_ERROR;
        f->err = errno;
        return;
    }
    if ((size_t)n != size || fstat(f->fd, &after) != 0) {
        f->status = READ_FALLBACK; /* it shrank or grew: read again as a stream */
        return;
    }
    f->changed = after.st_size != b->st_size || after.st_ino != b->st_ino
        || after.st_dev != b->st_dev
        || after.st_mtim.tv_sec != b->st_mtim.tv_sec || after.st_mtim.tv_nsec != b->st_mtim.tv_nsec
        || after.st_ctim.tv_sec != b->st_ctim.tv_sec || after.st_ctim.tv_nsec != b->st_ctim.tv_nsec;
    f->status = READ_OK;
}

static PyObject *read_small(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *list;
    long long limit;
    if (!PyArg_ParseTuple(args, "O!L", &PyList_Type, &list, &limit))
        return NULL;
    /* The paths are borrowed from this copy, which no other thread can change
     * while the GIL is released. */
    PyObject *items = PyList_AsTuple(list);
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    small_t *files = PyMem_Calloc(n ? (size_t)n : 1, sizeof(small_t));
    if (files == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_Check(it))
            PyErr_SetString(PyExc_TypeError,
                            "read_small: each item is (path, inode, device, size)");
        else if (PyArg_ParseTuple(it, "yKKL;read_small: each item is (path, inode, device, size)",
                                  &files[i].path, &files[i].ino, &files[i].dev,
                                  &files[i].listed))
            continue;
        PyMem_Free(files);
        Py_DECREF(items);
        return NULL;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long listed = files[i].listed;
        files[i].offset = total;
        files[i].room = (size_t)(listed < 0 ? 0 : listed > limit ? limit : listed) + 1;
        total += files[i].room;
    }
    PyObject *buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (buf == NULL) {
        PyMem_Free(files);
        Py_DECREF(items);
        return NULL;
    }
    char *base = PyBytes_AS_STRING(buf); /* not shared before it is returned */

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        small_t *f = &files[i];
        f->fd = open_for_backup(f->path);
        if (f->fd < 0) {
            f->status = READ_OPEN_ERROR;
            f->err = errno;
            continue;
        }
        (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_WILLNEED); /* only a hint */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        small_t *f = &files[i];
        if (f->fd < 0)
            continue;
        read_one(f, limit, base);
        close(f->fd);
    }
    Py_END_ALLOW_THREADS

    PyObject *result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        small_t *f = &files[i];
        PyObject *item;
        if (f->status == READ_OK) {
            int64_t mtime = 0, ctime = 0;
            (void)to_ns(f->before.st_mtim, &mtime); /* checked in read_one */
            (void)to_ns(f->before.st_ctim, &ctime);
            item = Py_BuildValue("(inLLLO)", READ_OK, (Py_ssize_t)f->offset,
                                 (long long)f->before.st_size, (long long)mtime,
                                 (long long)ctime, f->changed ? Py_True : Py_False);
        } else {
            item = Py_BuildValue("(ii)", f->status, f->err);
        }
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, item);
    }
    PyMem_Free(files);
    Py_DECREF(items);
    if (result == NULL) {
        Py_DECREF(buf);
        return NULL;
    }
    return Py_BuildValue("(NN)", buf, result);
}

/* subdirs(fd, dev) -> [name]: list the directory open as fd and lstat every
 * entry, without the GIL; the names of its subdirectories on device dev.
 * For warming the caches before a walk (warm.py): unlike scan, it builds no
 * object per entry. OSError when the directory cannot be listed. */
/* Ask the kernel to read ahead (POSIX_FADV_WILLNEED: the read starts, nobody
 * waits for it) every regular file of the listing changed at or after
 * since_ns (its ctime) and of 1 to max_bytes bytes: the files a backup is
 * about to read, while the key is derived and the disk is idle. A hint: every
 * error is ignored. No GIL. */
static void hint_changed(int fd, const entry_t *entries, size_t count, long long since_ns,
                         long long max_bytes)
{
    for (size_t i = 0; i < count; i++) {
        const struct stat *st = &entries[i].st;
        long long ctime_ns = (long long)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec;
        if (!S_ISREG(st->st_mode) || st->st_size <= 0 || st->st_size > max_bytes || ctime_ns < since_ns)
            continue;
        char name[NAME_MAX + 1]; /* the listing keeps names without their NUL */
        if (entries[i].len == 0 || entries[i].len > NAME_MAX)
            continue;
        memcpy(name, entries[i].name, entries[i].len);
        name[entries[i].len] = '\0';
        int flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
        int f = openat(fd, name, flags | O_NOATIME);
        if (f < 0 && errno == EPERM) /* O_NOATIME needs the file's owner */
            f = openat(fd, name, flags);
        if (f < 0)
            continue;
        (void)posix_fadvise(f, 0, st->st_size, POSIX_FADV_WILLNEED);
        close(f);
    }
}

static PyObject *subdirs(PyObject *module, PyObject *args)
{
    (void)module;
    int fd;
    unsigned long long dev;
    long long since_ns = -1, max_bytes = 0;
    if (!PyArg_ParseTuple(args, "iK|LL", &fd, &dev, &since_ns, &max_bytes))
        return NULL;
    entry_t *entries = NULL;
    size_t count = 0;
    int err = 0;
    scan_status status;
    Py_BEGIN_ALLOW_THREADS
    status = list_dir(fd, &entries, &count, &err);
    if (status != SCAN_ERRNO && since_ns >= 0 && max_bytes > 0)
        hint_changed(fd, entries, count, since_ns, max_bytes);
    Py_END_ALLOW_THREADS
    if (status == SCAN_ERRNO) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New(0);
    for (size_t i = 0; result != NULL && i < count; i++) {
        const entry_t *e = &entries[i];
        if (!S_ISDIR(e->st.st_mode) || (unsigned long long)e->st.st_dev != dev)
            continue;
        PyObject *name = PyBytes_FromStringAndSize(e->name, (Py_ssize_t)e->len);
        if (name == NULL || PyList_Append(result, name) < 0)
            Py_CLEAR(result);
        Py_XDECREF(name);
    }
    free_entries(entries, count);
    return result;
}

/* xattr_free(paths) -> bytes: per path, 1 when llistxattr says it has no
 * extended attributes, else 0 (it has some, or the call failed: the caller
 * reads them as before). Without the GIL: a backup asks this for the entries
 * of a new directory, instead of one os.listxattr per entry that released
 * and retook the GIL each (fsmeta.read_xattrs). */
static PyObject *xattr_free(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "paths must be a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(arg);
    PyObject **items = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(PyObject *));
    if (items == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        items[i] = PyList_GET_ITEM(arg, i);
        if (!PyBytes_Check(items[i])) {
            PyMem_Free(items);
            PyErr_SetString(PyExc_TypeError, "paths must be a list of bytes");
            return NULL;
        }
        Py_INCREF(items[i]); /* the list may change while the GIL is released */
    }
    PyObject *flags = PyBytes_FromStringAndSize(NULL, n);
    if (flags != NULL) {
        char *out = PyBytes_AS_STRING(flags);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const char *p = PyBytes_AS_STRING(items[i]);
            /* A path with a NUL in it would name another file: not answered. */
            out[i] = (char)((Py_ssize_t)strlen(p) == PyBytes_GET_SIZE(items[i])
                            && llistxattr(p, NULL, 0) == 0);
        }
        Py_END_ALLOW_THREADS
    }
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(items[i]);
    PyMem_Free(items);
    return flags;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O,
     "scan(fd or path) -> [(name, lstat, row)] sorted by name, or None to list in Python; "
     "a path (bytes) is opened as fsmeta.open_dir_for_backup opens it, and closed."},
    {"subdirs", subdirs, METH_VARARGS,
     "subdirs(fd, dev[, since_ns, max_bytes]) -> [name]: lstat every entry of a directory; its "
     "subdirectories on dev. With since_ns, the regular files changed since then (ctime) of up "
     "to max_bytes are read ahead (POSIX_FADV_WILLNEED)."},
    {"xattr_free", xattr_free, METH_O,
     "xattr_free(paths) -> bytes: 1 per path that has no extended attributes, else 0."},
    {"read_small", read_small, METH_VARARGS,
     "read_small([(path, inode, device, size)], limit) -> (data, [(0, offset, size, mtime_ns, "
     "ctime_ns, changed) | (status, errno)])"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "resurgo.snapshot._dirscan",
    "List a directory and read its small files without the GIL.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__dirscan(void)
{
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL)
        return NULL;
    PyObject *type = PyObject_GetAttrString(os, "stat_result");
    Py_DECREF(os);
    if (type == NULL)
        return NULL;
    if (!PyType_Check(type) || ((PyTypeObject *)type)->tp_basicsize <= 0) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_ImportError, "os.stat_result is not a type");
        return NULL;
    }
    /* stat_result() fills exactly the 19 fields of CPython's Linux build; an
     * interpreter with other fields gets the Python listing instead. */
    long counts[2] = {-1, -1};
    const char *names[2] = {"n_fields", "n_sequence_fields"};
    for (int i = 0; i < 2; i++) {
        PyObject *n = PyObject_GetAttrString(type, names[i]);
        if (n != NULL) {
            counts[i] = PyLong_AsLong(n);
            Py_DECREF(n);
        }
        PyErr_Clear();
    }
    if (counts[0] != 19 || counts[1] != 10) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_ImportError, "os.stat_result has other fields than expected");
        return NULL;
    }
    stat_result_type = (PyTypeObject *)type; /* kept for the life of the process */
    return PyModule_Create(&module_def);
}
