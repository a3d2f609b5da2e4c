/* resurgo.repo._cdc: the content-defined cut points of a buffer, in one call
 * (see chunker.py, which owns the Python side).
 *
 * pyfastcdc cuts in a Cython loop without the GIL, but hands out one chunk
 * per call of its iterator: every chunk released and retook the GIL. A large
 * file of 150 MiB is ~250 chunks, and beside a thread running Python each
 * retake waited for it (cutting 64 MiB: 0.026 s alone, 0.54 s beside a
 * spinning thread). Here one call returns every cut of a buffer, the GIL
 * released once for the whole of it.
 *
 * The cut points are FastCDC 2020's (Xia et al., "The Design of Fast
 * Content-Defined Chunking for Data Deduplication Based Storage Systems"),
 * exactly as pyfastcdc (and the fastcdc-rs crate it follows) computes them:
 * the same gear table and masks, the same normalised chunking, the gear table
 * XORed with the repository's seed, two bytes per step. They must be: a
 * repository's chunks are named by their content, so other cut points would
 * stop new backups deduplicating against old ones. tests/repo/test_chunker.py
 * compares the two over random data, sizes and seeds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

/* The gear table and the masks by log2 of the average size, as published
 * with FastCDC 2020 (fastcdc-rs, MIT; the same values as pyfastcdc). */
static const uint64_t GEAR[256] = {
    0x3B5D3C7D207E37DCULL, 0x784D68BA91123086ULL, 0xCD52880F882E7298ULL, 0xEACF8E4E19FDCCA7ULL,
    0xC31F385DFBD1632BULL, 0x1D5F27001E25ABE6ULL, 0x83130BDE3C9AD991ULL, 0xC4B225676E9B7649ULL,
    0xAA329B29E08EB499ULL, 0xB67FCBD21E577D58ULL, 0x0027BAAADA2ACF6BULL, 0xE3EF2D5AC73C2226ULL,
    0x0890F24D6ED312B7ULL, 0xA809E036851D7C7EULL, 0xF0A6FE5E0013D81BULL, 0x1D026304452CEC14ULL,
    0x03864632648E248FULL, 0xCDAACF3DCD92B9B4ULL, 0xF5E012E63C187856ULL, 0x8862F9D3821C00B6ULL,
    0xA82F7338750F6F8AULL, 0x1E583DC6C1CB0B6FULL, 0x7A3145B69743A7F1ULL, 0xABB20FEE404807EBULL,
    0xB14B3CFE07B83A5DULL, 0xB9DC27898ADB9A0FULL, 0x3703F5E91BAA62BEULL, 0xCF0BB866815F7D98ULL,
    0x3D9867C41EA9DCD3ULL, 0x1BE1FA65442BF22CULL, 0x14300DA4C55631D9ULL, 0xE698E9CBC6545C99ULL,
    0x4763107EC64E92A5ULL, 0xC65821FC65696A24ULL, 0x76196C064822F0B7ULL, 0x485BE841F3525E01ULL,
    0xF652BC9C85974FF5ULL, 0xCAD8352FACE9E3E9ULL, 0x2A6ED1DCEB35E98EULL, 0xC6F483BADC11680FULL,
    0x3CFD8C17E9CF12F1ULL, 0x89B83C5E2EA56471ULL, 0xAE665CFD24E392A9ULL, 0xEC33C4E504CB8915ULL,
    0x3FB9B15FC9FE7451ULL, 0xD7FD1FD1945F2195ULL, 0x31ADE0853443EFD8ULL, 0x255EFC9863E1E2D2ULL,
    0x10EAB6008D5642CFULL, 0x46F04863257AC804ULL, 0xA52DC42A789A27D3ULL, 0xDAAADF9CE77AF565ULL,
    0x6B479CD53D87FEBBULL, 0x6309E2D3F93DB72FULL, 0xC5738FFBAA1FF9D6ULL, 0x6BD57F3F25AF7968ULL,
    0x67605486D90D0A4AULL, 0xE14D0B9663BFBDAEULL, 0xB7BBD8D816EB0414ULL, 0xDEF8A4F16B35A116ULL,
    0xE7932D85AAAFFED6ULL, 0x08161CBAE90CFD48ULL, 0x855507BEB294F08BULL, 0x91234EA6FFD399B2ULL,
    0xAD70CF4B2435F302ULL, 0xD289A97565BC2D27ULL, 0x8E558437FFCA99DEULL, 0x96D2704B7115C040ULL,
    0x0889BBCDFC660E41ULL, 0x5E0D4E67DC92128DULL, 0x72A9F8917063ED97ULL, 0x438B69D409E016E3ULL,
    0xDF4FED8A5D8A4397ULL, 0x00F41DCF41D403F7ULL, 0x4814EB038E52603FULL, 0x9DAFBACC58E2D651ULL,
    0xFE2F458E4BE170AFULL, 0x4457EC414DF6A940ULL, 0x06E62F1451123314ULL, 0xBD1014D173BA92CCULL,
    0xDEF318E25ED57760ULL, 0x9FEA0DE9DFCA8525ULL, 0x459DE1E76C20624BULL, 0xAEEC189617E2D666ULL,
    0x126A2C06AB5A83CBULL, 0xB1321532360F6132ULL, 0x65421503DBB40123ULL, 0x2D67C287EA089AB3ULL,
    0x6C93BFF5A56BD6B6ULL, 0x4FFB2036CAB6D98DULL, 0xCE7B785B1BE7AD4FULL, 0xEDB42EF6189FD163ULL,
    0xDC905288703988F6ULL, 0x365F9C1D2C691884ULL, 0xC640583680D99BFEULL, 0x3CD4624C07593EC6ULL,
    0x7F1EA8D85D7C5805ULL, 0x014842D480B57149ULL, 0x0B649BCB5A828688ULL, 0xBCD5708ED79B18F0ULL,
    0xE987C862FBD2F2F0ULL, 0x982731671F0CD82CULL, 0xBAF13E8B16D8C063ULL, 0x8EA3109CBD951BBAULL,
    0xD141045BFB385CADULL, 0x2ACBC1A0AF1F7D30ULL, 0xE6444D89DF03BFDFULL, 0xA18CC771B8188FF9ULL,
    0x9834429DB01C39BBULL, 0x214ADD07FE086A1FULL, 0x8F07C19B1F6B3FF9ULL, 0x56A297B1BF4FFE55ULL,
    0x94D558E493C54FC7ULL, 0x40BFC24C764552CBULL, 0x931A706F8A8520CBULL, 0x32229D322935BD52ULL,
    0x2560D0F5DC4FEFAFULL, 0x9DBCC48355969BB6ULL, 0x0FD81C3985C0B56AULL, 0xE03817E1560F2BDAULL,
    0xC1BB4F81D892B2D5ULL, 0xB0C4864F4E28D2D7ULL, 0x3ECC49F9D9D6C263ULL, 0x51307E99B52BA65EULL,
    0x8AF2B688DA84A752ULL, 0xF5D72523B91B20B6ULL, 0x6D95FF1FF4634806ULL, 0x562F21555458339AULL,
    0xC0CE47F889336346ULL, 0x487823E5089B40D8ULL, 0xE4727C7EBC6D9592ULL, 0x5A8F7277E94970BAULL,
    0xFCA2F406B1C8BB50ULL, 0x5B1F8A95F1791070ULL, 0xD304AF9FC9028605ULL, 0x5440AB7FC930E748ULL,
    0x312D25FBCA2AB5A1ULL, 0x10F4A4B234A4D575ULL, 0x90301D55047E7473ULL, 0x3B6372886C61591EULL,
    0x293402B77C444E06ULL, 0x451F34A4D3E97DD7ULL, 0x3158D814D81BC57BULL, 0x034942425B9BDA69ULL,
    0xE2032FF9E532D9BBULL, 0x62AE066B8B2179E5ULL, 0x9545E10C2F8D71D8ULL, 0x7FF7483EB2D23FC0ULL,
    0x00945FCEBDC98D86ULL, 0x8764BBBE99B26CA2ULL, 0x1B1EC62284C0BFC3ULL, 0x58E0FCC4F0AA362BULL,
    0x5F4ABEFA878D458DULL, 0xFD74AC2F9607C519ULL, 0xA4E3FB37DF8CBFA9ULL, 0xBF697E43CAC574E5ULL,
    0x86F14A3F68F4CD53ULL, 0x24A23D076F1CE522ULL, 0xE725CD8048868CC8ULL, 0xBF3C729EB2464362ULL,
    0xD8F6CD57B3CC1ED8ULL, 0x6329E52425541577ULL, 0x62AA688AD5AE1AC0ULL, 0x0A242566269BF845ULL,
    0x168B1A4753ACA74BULL, 0xF789AFEFFF2E7E3CULL, 0x6C3362093B6FCCDBULL, 0x4CE8F50BD28C09B2ULL,
    0x006A2DB95AE8AA93ULL, 0x975B0D623C3D1A8CULL, 0x18605D3935338C5BULL, 0x5BB6F6136CAD3C71ULL,
    0x0F53A20701F8D8A6ULL, 0xAB8C5AD2E7E93C67ULL, 0x40B5AC5127ACAA29ULL, 0x8C7BF63C2075895FULL,
    0x78BD9F7E014A805CULL, 0xB2C9E9F4F9C8C032ULL, 0xEFD6049827EB91F3ULL, 0x2BE459F482C16FBDULL,
    0xD92CE0C5745AAA8CULL, 0x0AAA8FB298D965B9ULL, 0x2B37F92C6C803B15ULL, 0x8C54A5E94E0F0E78ULL,
    0x95F9B6E90C0A3032ULL, 0xE7939FAA436C7874ULL, 0xD16BFE8F6A8A40C9ULL, 0x44982B86263FD2FAULL,
    0xE285FB39F984E583ULL, 0x779A8DF72D7619D3ULL, 0xF2D79A8DE8D5DD1EULL, 0xD1037354D66684E2ULL,
    0x004C82A4E668A8E5ULL, 0x31D40A7668B044E6ULL, 0xD70578538BD02C11ULL, 0xDB45431078C5F482ULL,
    0x977121BB7F6A51ADULL, 0x73D5CCBD34EFF8DDULL, 0xE437A07D356E17CDULL, 0x47B2782043C95627ULL,
    0x9FB251413E41D49AULL, 0xCCD70B60652513D3ULL, 0x1C95B31E8A1B49B2ULL, 0xCAE73DFD1BCB4C1BULL,
    0x34D98331B1F5B70FULL, 0x784E39F22338D92FULL, 0x18613D4A064DF420ULL, 0xF1D8DAE25F0BCEBEULL,
    0x33F77C15AE855EFCULL, 0x3C88B3B912EB109CULL, 0x956A2EC96BAFEEA5ULL, 0x1AA005B5E0AD0E87ULL,
    0x5500D70527C4BB8EULL, 0xE36C57196421CC44ULL, 0x13C4D286CC36EE39ULL, 0x5654A23D818B2A81ULL,
    0x77B1DC13D161ABDCULL, 0x734F44DE5F8D5EB5ULL, 0x60717E174A6C89A2ULL, 0xD47D9649266A211EULL,
    0x5B13A4322BB69E90ULL, 0xF7669609F8B5FC3CULL, 0x21E6AC55BEDCDAC9ULL, 0x9B56B62B61166DEAULL,
    0xF48F66B939797E9CULL, 0x35F332F9C0E6AE9AULL, 0xCC733F6A9A878DB0ULL, 0x3DA161E41CC108C2ULL,
    0xB7D74AE535914D51ULL, 0x4D493B0B11D36469ULL, 0xCE264D1DFBA9741AULL, 0xA9D1F2DC7436DC06ULL,
    0x70738016604C2A27ULL, 0x231D36E96E93F3D5ULL, 0x7666881197838D19ULL, 0x4A2A83090AAAD40CULL,
    0xF1E761591668B35DULL, 0x7363236497F730A7ULL, 0x301080E37379DD4DULL, 0x502DEA2971827042ULL,
    0xC2C5EB858F32625FULL, 0x786AFB9EDFAFBDFFULL, 0xDAEE0D868490B2A4ULL, 0x617366B3268609F6ULL,
    0xAE0E35A0FE46173EULL, 0xD1A07DE93E824F11ULL, 0x079B8B115EA4CCA8ULL, 0x93A99274558FAEBBULL,
    0xFB1E6E22E08A03B3ULL, 0xEA635FDBA3698DD0ULL, 0xCF53659328503A5CULL, 0xCDE3B31E6FD5D780ULL,
    0x8E3E4221D3614413ULL, 0xEF14D0D86BF1A22CULL, 0xE1D830D3F16C5DDBULL, 0xAABD2B2A451504E1ULL,
};
static const uint64_t MASKS[26] = {
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000001804110ULL, 0x0000000001803110ULL, 0x0000000018035100ULL,
    0x0000001800035300ULL, 0x0000019000353000ULL, 0x0000590003530000ULL, 0x0000D90003530000ULL,
    0x0000D90103530000ULL, 0x0000D90303530000ULL, 0x0000D90313530000ULL, 0x0000D90F03530000ULL,
    0x0000D90303537000ULL, 0x0000D90703537000ULL, 0x0000D90707537000ULL, 0x0000D91707537000ULL,
    0x0000D91747537000ULL, 0x0000D91767537000ULL, 0x0000D93767537000ULL, 0x0000D93777537000ULL,
    0x0000D93777577000ULL, 0x0000DB3777577000ULL,
};

/* Above this many bytes, the GIL is released for the cut: a directory's
 * small files (at most 2 MiB each, most under the minimum chunk size) are cut
 * holding it, since taking it back waits for the other thread. */
#define CUT_HOLDS_GIL_UPTO (256 * 1024)

/* pyfastcdc's bounds on the sizes. */
#define MIN_LO 64ULL
#define MIN_HI (1ULL << 20)
#define AVG_LO 256ULL
#define AVG_HI (4ULL << 20)
#define MAX_LO 1024ULL
#define MAX_HI (16ULL << 20)

typedef struct {
    PyObject_HEAD
    uint64_t min_size, avg_size, max_size;
    uint64_t mask_s, mask_l, mask_s_ls, mask_l_ls;
    uint64_t gear[256], gear_ls[256];
} Cutter;

/* The length of the first chunk of buf[0:len]: FastCDC 2020, two bytes a step. */
static uint64_t first_cut(const Cutter *c, const uint8_t *buf, uint64_t len) {
    uint64_t remaining = len;
    if (remaining <= c->min_size)
        return remaining;
    uint64_t center = c->avg_size;
    if (remaining > c->max_size)
        remaining = c->max_size;
    else if (remaining < center)
        center = remaining;
    uint64_t hash = 0;
    uint64_t start = (c->min_size / 2) * 2, mid = (center / 2) * 2, end = (remaining / 2) * 2;
    const uint64_t *gear = c->gear, *gear_ls = c->gear_ls;
    /* Below the average size the stricter mask: chunk sizes gather around it. */
    for (uint64_t pos = start; pos < mid; pos += 2) {
        hash = (hash << 2) + gear_ls[buf[pos]];
        if ((hash & c->mask_s_ls) == 0)
            return pos;
        hash += gear[buf[pos + 1]];
        if ((hash & c->mask_s) == 0)
            return pos + 1;
    }
    for (uint64_t pos = mid; pos < end; pos += 2) {
        hash = (hash << 2) + gear_ls[buf[pos]];
        if ((hash & c->mask_l_ls) == 0)
            return pos;
        hash += gear[buf[pos + 1]];
        if ((hash & c->mask_l) == 0)
            return pos + 1;
    }
    return remaining;
}

static int cutter_init(Cutter *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"seed", "min_size", "avg_size", "max_size", "normalization", NULL};
    unsigned long long seed, min_size, avg_size, max_size;
    int nc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKKKi", kwlist, &seed, &min_size, &avg_size,
                                     &max_size, &nc))
        return -1;
    if (seed >> 63) {
        PyErr_SetString(PyExc_ValueError, "seed must be below 2**63");
        return -1;
    }
    if (min_size < MIN_LO || min_size > MIN_HI || avg_size < AVG_LO || avg_size > AVG_HI ||
        max_size < MAX_LO || max_size > MAX_HI || min_size > avg_size || avg_size > max_size) {
        PyErr_SetString(PyExc_ValueError, "chunk sizes out of range");
        return -1;
    }
    if (nc < 0 || nc > 3) {
        PyErr_SetString(PyExc_ValueError, "normalization must be 0 to 3");
        return -1;
    }
    /* log2 rounded to the nearest, in double precision, as pyfastcdc does. */
    int bits = (int)floor(log2((double)avg_size) + 0.5);
    self->min_size = min_size;
    self->avg_size = avg_size;
    self->max_size = max_size;
    self->mask_s = MASKS[bits + nc];
    self->mask_l = MASKS[bits - nc];
    self->mask_s_ls = self->mask_s << 1;
    self->mask_l_ls = self->mask_l << 1;
    for (int i = 0; i < 256; i++) {
        self->gear[i] = GEAR[i] ^ seed;
        self->gear_ls[i] = (GEAR[i] << 1) ^ (seed << 1);
    }
    return 0;
}

static PyObject *cutter_spans(Cutter *self, PyObject *arg) {
    if (self->min_size == 0) {
        PyErr_SetString(PyExc_ValueError, "Cutter was not initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t len = (uint64_t)view.len;
    /* At most len / min_size + 1 chunks. */
    uint64_t room = len / self->min_size + 2;
    uint64_t *cuts = PyMem_RawMalloc(room * sizeof *cuts);
    if (cuts == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint64_t count = 0, offset = 0;
    const uint8_t *buf = view.buf;
    PyThreadState *saved = len > CUT_HOLDS_GIL_UPTO ? PyEval_SaveThread() : NULL;
    while (offset < len && count < room) {
        uint64_t n = first_cut(self, buf + offset, len - offset);
        cuts[count++] = n;
        offset += n;
    }
    if (saved != NULL)
        PyEval_RestoreThread(saved);
    PyBuffer_Release(&view);
    PyObject *list = PyList_New((Py_ssize_t)count);
    offset = 0;
    for (uint64_t i = 0; list != NULL && i < count; i++) {
        PyObject *span = Py_BuildValue("(KK)", (unsigned long long)offset, (unsigned long long)cuts[i]);
        if (span == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, span);
        offset += cuts[i];
    }
    PyMem_RawFree(cuts);
    return list;
}

static PyMethodDef cutter_methods[] = {
    {"spans", (PyCFunction)cutter_spans, METH_O,
     "spans(buffer): every chunk of the buffer, as (offset, length), the last one ending at its end."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CutterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resurgo.repo._cdc.Cutter",
    .tp_doc = PyDoc_STR("Cutter(seed, min_size, avg_size, max_size, normalization): FastCDC 2020 cut points."),
    .tp_basicsize = sizeof(Cutter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cutter_init,
    .tp_methods = cutter_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "resurgo.repo._cdc",
    "FastCDC 2020 cut points of a buffer in one call.", -1, NULL,
};

PyMODINIT_FUNC PyInit__cdc(void) {
    if (PyType_Ready(&CutterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CutterType);
    if (PyModule_AddObject(m, "Cutter", (PyObject *)&CutterType) < 0) {
        Py_DECREF(&CutterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
