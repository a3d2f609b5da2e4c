/* resurgo.snapshot._newfiles: a batch of small new files created, written,
 * dated and named in one call without the GIL (see newfiles.py, which owns
 * the Python side, and ops/restore.py, which decides what goes through it).
 *
 * A restore of 20,000 small files spent most of its time in five system
 * calls per file (create, write, set the times, link, close), each of which
 * released and retook the GIL from Python: the thread writing files and the
 * one decoding blobs handed the GIL to each other at every call, and the
 * interpreter's work between the calls held the other core idle. Here a
 * batch of files is made with the GIL released once.
 *
 * Each file is made exactly as ops/restore.py's _write_new makes a fresh file
 * that needs nothing but its times: an anonymous file (O_TMPFILE) in the
 * directory, created with its final mode, written, truncated up to its size
 * when it ends in a hole, given its access and modification times, and
 * linked in under its name through /proc/self/fd (so the name only ever
 * shows the finished file). Nothing here decides anything; every failure is
 * reported per file, with what was done, for Python to handle as it would
 * have. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* Per file, as (status, errno). */
#define MADE 0         /* created and linked in */
#define MADE_NO_TIMES 1 /* created and linked in, but its times could not be set (errno) */
#define NO_TMPFILE 2   /* the file system makes no anonymous files (errno): nothing was made */
#define FAILED 3       /* nothing visible was made (errno) */

typedef struct {
    int dfd;
    const char *name;
    Py_buffer data;
    int has_data;
    long long size;
    unsigned int mode;
    struct timespec times[2];
    int status, err;
} NewFile;

/* A time in nanoseconds as os.utime(ns=...) splits it: whole seconds rounded
 * down, the nanoseconds always in [0, 1e9). */
static struct timespec split_ns(long long ns) {
    long long sec = ns / 1000000000LL, rem = ns % 1000000000LL;
    if (rem < 0) {
        rem += 1000000000LL;
        sec -= 1;
    }
    struct timespec t = {(time_t)sec, (long)rem};
    return t;
}

/* Make one file; sets status and err. No GIL. */
static void make_one(NewFile *f) {
    int fd = openat(f->dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, (mode_t)f->mode);
    if (fd < 0) {
        int e = errno;
        f->status = (e == EOPNOTSUPP || e == EISDIR || e == EINVAL || e == ENOENT) ? NO_TMPFILE : FAILED;
        f->err = e;
        return;
    }
    const char *buf = f->data.buf;
    Py_ssize_t len = f->data.len, done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, (size_t)(len - done), (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            f->status = FAILED;
            f->err = n < 0 ? errno : EIO;
            close(fd);
            return;
        }
        done += n;
    }
    if (f->size > (long long)len && ftruncate(fd, (off_t)f->size) < 0) {
        f->status = FAILED;
        f->err = errno;
        close(fd);
        return;
    }
    int times_err = futimens(fd, f->times) < 0 ? errno : 0;
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, f->dfd, f->name, AT_SYMLINK_FOLLOW) < 0) {
        f->status = FAILED;
        f->err = errno;
        close(fd);
        return;
    }
    close(fd);
    f->status = times_err ? MADE_NO_TIMES : MADE;
    f->err = times_err;
}

static PyObject *create(PyObject *module, PyObject *arg) {
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "create takes a list of files");
        return NULL;
    }
    /* An own copy of the list: the tuples and buffers parsed below must
     * outlive the call, whatever another thread does to the list. */
    PyObject *items = PyList_GetSlice(arg, 0, PyList_GET_SIZE(arg));
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    NewFile *files = PyMem_Calloc((size_t)(n ? n : 1), sizeof(NewFile));
    PyObject *result = NULL;
    if (files == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        NewFile *f = &files[i];
        Py_ssize_t name_len;
        long long atime, mtime;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "iy#y*LILL", &f->dfd, &f->name, &name_len,
                              &f->data, &f->size, &f->mode, &atime, &mtime))
            goto done;
        f->has_data = 1;
        if (name_len == 0 || (Py_ssize_t)strlen(f->name) != name_len || strchr(f->name, '/') != NULL) {
            PyErr_Format(PyExc_ValueError, "file %zd: not a name in a directory", i);
            goto done;
        }
        if (f->size < f->data.len || f->mode > 07777) {
            PyErr_Format(PyExc_ValueError, "file %zd: bad size or mode", i);
            goto done;
        }
        f->times[0] = split_ns(atime);
        f->times[1] = split_ns(mtime);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        make_one(&files[i]);
        if (files[i].status == NO_TMPFILE) {
            /* The same directory gives the same answer for the rest: Python
             * makes them the other way. */
            for (Py_ssize_t j = i + 1; j < n; j++) {
                files[j].status = NO_TMPFILE;
                files[j].err = files[i].err;
            }
            break;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *pair = Py_BuildValue("(ii)", files[i].status, files[i].err);
        if (pair == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, pair);
    }
done:
    for (Py_ssize_t i = 0; files != NULL && i < n; i++)
        if (files[i].has_data)
            PyBuffer_Release(&files[i].data);
    PyMem_Free(files);
    Py_DECREF(items);
    return result;
}

static PyMethodDef methods[] = {
    {"create", create, METH_O,
     PyDoc_STR("create(files) -> [(status, errno)]: each (dir_fd, name, data, size, mode, atime_ns, "
               "mtime_ns) made as an anonymous file, written, dated and linked in, without the GIL.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "resurgo.snapshot._newfiles",
    PyDoc_STR("Small new files created, written, dated and named in one call (see newfiles.py)."), -1,
    methods,
};

PyMODINIT_FUNC PyInit__newfiles(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MADE", MADE) < 0 ||
        PyModule_AddIntConstant(m, "MADE_NO_TIMES", MADE_NO_TIMES) < 0 ||
        PyModule_AddIntConstant(m, "NO_TMPFILE", NO_TMPFILE) < 0 ||
        PyModule_AddIntConstant(m, "FAILED", FAILED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
