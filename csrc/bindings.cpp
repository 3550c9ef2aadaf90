// jebm_kernels._C: pybind11 bindings for the CPU kernels.
//
// Every binding takes raw addresses (Python ints) and sizes, never torch tensors, so the module
// does not depend on torch's C++ ABI and one build serves any torch version. jebm_kernels/prior_chain/cpu.py and update/cpu.py
// checks dtype, device, shape and contiguity of every tensor before it passes an address; this
// file checks again everything it can see: sizes (non-negative, within limits, consistent with
// each other), list lengths, null addresses, finite scalars, counter overflow -- the checks it
// shares with the CUDA bindings are binding_checks.h's, the tables it reports (act_codes, limits)
// binding_tables.h's. A bad argument raises std::invalid_argument, which pybind11 turns into
// ValueError; a wrongly typed one is a TypeError from pybind11's own conversion. Kernels run with
// the GIL released.
//
// Instruction set: chosen once at import with __builtin_cpu_supports (AVX-512 F/DQ/BW/VL, else
// AVX2+FMA, else the baseline build); the environment variable JEBM_ISA or set_isa() can pick a
// lower one (tests use that to run the generic code on an AVX2 machine) or a narrow build alone
// (avx512-narrow8, avx512-narrow, avx2-narrow). With the best one, a call combines the wide
// kernels and their narrow companions (Model::plan).
//
// bf16: a Model made with bf16=True runs its chains on the AVX512-BF16 builds (avx512-bf16 and its
// narrow companions: the GEMMs in bf16 pairs, fp32 sums), the bf16 counterparts of the fp32 builds
// the current instruction set would combine (a forced avx512-narrow8 or avx512-narrow: its bf16
// counterpart alone); its eval and z1 (the start check, the conv posterior's prior terms) stay on
// the fp32 build. JEBM_ISA and set_isa name fp32 builds only; bf16 follows them, and needs the CPU's
// AVX512-BF16 and an avx512 build (bf16_available()).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "binding_checks.h"
#include "binding_tables.h"
#include "kernels.h"

namespace py = pybind11;

namespace jebm {
namespace {

const IsaOps* g_isa = nullptr;
// True while g_isa is the best instruction set this CPU has (not forced to another by JEBM_ISA or
// set_isa): then a call runs on the wide kernels and its narrow companions (see Model::plan).
bool g_auto = true;

// Every kernel build, best first: the wide kernels of an instruction set, then its narrow ones
// (blocks of 8 or 4 chains), which the automatic choice uses for small batches and for the last
// chains of a call. Forcing a name (JEBM_ISA, set_isa) runs every block on that build alone.
constexpr const char* kIsaNames[] = {"avx512", "avx512-narrow8", "avx512-narrow", "avx2", "avx2-narrow", "generic"};

bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (name.rfind("avx512", 0) == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (name.rfind("avx2", 0) == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return name == "generic";
}

const IsaOps* isa_by_name(const std::string& name) {
    if (name == "avx512") return isa_avx512();
    if (name == "avx512-narrow8") return isa_avx512_narrow8();
    if (name == "avx512-narrow") return isa_avx512_narrow();
    if (name == "avx2") return isa_avx2();
    if (name == "avx2-narrow") return isa_avx2_narrow();
    if (name == "generic") return isa_generic();
    return nullptr;
}

std::vector<std::string> usable_isas() {
    std::vector<std::string> out;
    for (const char* n : kIsaNames)
        if (isa_by_name(n) && cpu_has(n)) out.push_back(n);
    return out;
}

// The builds a call may combine, widest first: under the automatic choice the wide kernels and
// their narrow companions, otherwise the forced build alone.
std::vector<const IsaOps*> isa_family(const IsaOps* isa, bool automatic) {
    std::vector<const IsaOps*> f{isa};
    if (!automatic) return f;
    const char* narrow[2] = {nullptr, nullptr};
    if (isa == isa_avx512()) {
        narrow[0] = "avx512-narrow8";
        narrow[1] = "avx512-narrow";
    } else if (isa == isa_avx2()) {
        narrow[0] = "avx2-narrow";
    }
    for (const char* n : narrow)
        if (n && isa_by_name(n) && cpu_has(n)) f.push_back(isa_by_name(n));
    return f;
}

// Relative cost of one block of a build: its chains, weighted by how much less of the FMA peak a
// narrow block's GEMM reaches (measured on Zen 5 and Zen 1: ~85% with 8 chains, ~65% with 4).
double block_cost(const IsaOps* ops, int widest) {
    const int nb = ops->block_chains;
    if (nb >= widest || nb >= ops->vector_width) return nb;
    return nb * (nb >= 8 ? 1.2 : 1.5);
}

void set_isa(const std::string& name) {
    const IsaOps* ops = isa_by_name(name);
    if (!ops && name.find("bf16") != std::string::npos)
        throw std::invalid_argument("'" + name + "': bf16 is a Model option (Model(..., bf16=True)), not an instruction set; "
                                    "its kernels follow the avx512 builds");
    if (!ops) throw std::invalid_argument("unknown or not compiled instruction set '" + name + "'; choose avx512, avx2, avx2-narrow or generic");
    if (!cpu_has(name)) throw std::invalid_argument("this CPU cannot run the '" + name + "' kernels");
    g_isa = ops;
    g_auto = name == usable_isas().front();
}

// The bf16 build of the same block width as an fp32 AVX-512 build, or nullptr.
const IsaOps* bf16_of(const IsaOps* ops) {
    if (ops == nullptr) return nullptr;
    if (ops == isa_avx512()) return isa_avx512_bf16();
    if (ops == isa_avx512_narrow8()) return isa_avx512_bf16_narrow8();
    if (ops == isa_avx512_narrow()) return isa_avx512_bf16_narrow();
    return nullptr;
}

// Why a bf16 Model cannot be made now, or "" when it can.
std::string bf16_unavailable() {
    const std::string fix = "; use precision='fp32' (Model(..., bf16=False))";
    if (!isa_avx512_bf16() || !isa_avx512_bf16_narrow8() || !isa_avx512_bf16_narrow())
        return "bf16 kernels need AVX512-BF16 (vdpbf16ps), which this build of jebm_kernels._C was compiled without "
               "(an x86-64 compiler with it: GCC 10 or later)" + fix;
    bool cpu = cpu_has("avx512");
#if defined(__x86_64__) || defined(__i386__)
    cpu = cpu && __builtin_cpu_supports("avx512bf16");
#endif
    if (!cpu)
        return std::string("bf16 kernels need AVX512-BF16 (vdpbf16ps); this CPU has none (it runs '") +
               usable_isas().front() + "')" + fix;
    if (!bf16_of(g_isa))
        return std::string("bf16 kernels need AVX512-BF16 (vdpbf16ps) and an avx512 build; JEBM_ISA or set_isa runs '") +
               g_isa->name + "'" + fix;
    return "";
}

void init_isa() {
    const char* env = std::getenv("JEBM_ISA");
    if (env && *env) {
        try {
            set_isa(env);
            return;
        } catch (const std::invalid_argument&) {
            // fall through to the best the CPU has; cpu.py reports isa() to the user
        }
    }
    g_isa = isa_by_name(usable_isas().front());
}

// A host address (no check can tell host memory from a wrong pointer: cpu.py passes only the
// addresses of CPU tensors it has checked).
template <class T>
T* addr(uint64_t p, const std::string& what) {
    return aligned_address<T>(p, what);
}

template <class T>
T* addr_or_null(uint64_t p, const std::string& what) {
    return p == 0 ? nullptr : addr<T>(p, what);
}

constexpr int64_t kMaxThreads = 4096;
int check_threads(int64_t n) { return (int)check_count(n, 1, kMaxThreads, "nthreads"); }

// 2 sigma^2 as a float32 the kernels divide by: finite and not 0.
float two_sigma_squared(double sigma, const std::string& what) {
    const float den = finite_float(2 * sigma * sigma, "2 " + what + "^2");
    if (den == 0.0f) bad(what + " too small for float32");
    return den;
}

// sizes, weight addresses, bias addresses (0: none), activation, its parameter, output activation
using MLPArg = std::tuple<std::vector<int64_t>, std::vector<uint64_t>, std::vector<uint64_t>, int64_t, double, int64_t>;

class Model {
public:
    Model(const std::vector<int64_t>& dims, const std::vector<MLPArg>& mlps, const std::vector<int64_t>& terms,
          int64_t joint, const std::vector<int64_t>& gauss, const std::vector<double>& floors, int64_t space,
          double energy_sign, const std::vector<double>& base_sigma, const std::vector<double>& prior_sigma,
          int64_t decoder, double sigma_x, bool bf16)
        : ops_(g_isa), desc_(new ModelDesc()), bf16_(bf16) {
        if (bf16) {
            const std::string why = bf16_unavailable();
            if (!why.empty()) bad(why);
        }
        ModelDesc& d = *desc_;
        std::memset(&d, 0, sizeof(ModelDesc));
        d.n_mlps = (int)check_count((int64_t)mlps.size(), 0, kMaxMLPs, "number of MLPs");
        std::vector<CheckedMLP> checked;
        for (int i = 0; i < d.n_mlps; ++i) {
            const auto& [sizes, w, b, act, param, out_act] = mlps[i];
            const std::string nm = "MLP " + std::to_string(i);
            const CheckedMLP& c = checked.emplace_back(check_mlp(sizes, act, param, out_act, nm));
            MLPDesc& m = d.mlps[i];
            m.n_layers = c.n_layers;
            if ((int64_t)w.size() != m.n_layers || (int64_t)b.size() != m.n_layers)
                bad(nm + ": needs one weight and one bias address (0 = no bias) per layer: " + std::to_string(m.n_layers) +
                    " layers, " + std::to_string(w.size()) + " weights, " + std::to_string(b.size()) + " biases");
            for (int l = 0; l <= m.n_layers; ++l) m.sizes[l] = c.sizes[l];
            for (int l = 0; l < m.n_layers; ++l) {
                m.w[l] = addr<const float>(w[l], nm + " weight " + std::to_string(l));
                m.b[l] = addr_or_null<const float>(b[l], nm + " bias " + std::to_string(l));
            }
            m.act = c.act;
            m.out_act = c.out_act;
            m.act_param = c.param;
        }
        const PriorLayout p = check_prior_layout(dims, checked, terms, joint, gauss, floors, space, energy_sign,
                                                 base_sigma, prior_sigma);
        d.L = p.L;
        D_ = p.D;
        for (int l = 0; l < d.L; ++l) {
            d.dims[l] = p.dims[l];
            d.term[l] = p.term[l];
        }
        d.joint = p.joint;
        d.n_gauss = p.n_gauss;
        for (int l = 0; l < d.n_gauss; ++l) {
            d.gauss[l] = p.gauss[l];
            d.sigma_floor[l] = p.sigma_floor[l];
        }
        d.space = p.space;
        d.energy_sign = p.energy_sign;
        d.has_base = p.has_base;
        for (int l = 0; l < d.L && d.has_base; ++l) {
            d.base_on[l] = std::isinf(p.base_sigma[l]) ? 0 : 1;
            d.base_den[l] = d.base_on[l] ? two_sigma_squared(p.base_sigma[l], "base_sigma") : 1.0f;
        }
        d.has_ps = p.has_prior_sigma;
        for (int l = 0; l < d.L && d.has_ps; ++l) d.ps_den[l] = two_sigma_squared(p.prior_sigma[l], "prior_sigma");
        d.decoder = (int)decoder;
        if (decoder != -1) {
            if (decoder < 0 || decoder >= d.n_mlps) bad("decoder: MLP index " + std::to_string(decoder) + " out of range");
            const MLPDesc& m = d.mlps[decoder];
            if (m.sizes[0] != d.dims[0]) bad("the decoder must take z_1 (" + std::to_string(d.dims[0]) + " inputs)");
            d.P = m.sizes[m.n_layers];
            if (!(std::isfinite(sigma_x) && sigma_x > 0)) bad("sigma_x must be finite and > 0");
            d.dec_den = two_sigma_squared(sigma_x, "sigma_x");
        }
        family_ = isa_family(ops_, g_auto);
        if (bf16)
            for (const IsaOps*& f : family_) f = bf16_of(f);
        packed_.assign(family_.size(), nullptr);
        model_ = ops_->pack(desc_.get());
        if (!model_) throw std::bad_alloc();
        if (!bf16) packed_[0] = model_;
    }

    ~Model() {
        for (size_t t = 0; t < works_.size(); ++t)
            if (works_[t]) family_[t % family_.size()]->work_free(works_[t]);
        for (size_t v = 0; v < family_.size(); ++v)
            if (packed_[v]) family_[v]->release(packed_[v]);
        if (bf16_) ops_->release(model_);  // the fp32 packing eval uses, not one of packed_
    }
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    void chain(int64_t B, const std::vector<uint64_t>& x, const std::vector<uint64_t>& out, int64_t K,
               const std::vector<double>& h, const std::vector<double>& c, const std::vector<double>& mala_den,
               bool mala, uint64_t seed, uint64_t offset, uint64_t xobs, uint64_t energy_out, uint64_t gnorm_out,
               uint64_t accept_out, uint64_t accept_record, int64_t nthreads) {
        const ModelDesc& d = *desc_;
        ChainArgs a;
        std::memset(&a, 0, sizeof a);
        check_chain_scalars(a, d.L, D_, B, K, h, c, mala_den, mala, seed, offset);
        set_layers(x, a.x, "x");
        set_layers(out, a.out, "out");
        a.xobs = d.decoder >= 0 ? addr<const float>(xobs, "xobs") : nullptr;
        a.nthreads = check_threads(nthreads);
        float* e_out = addr_or_null<float>(energy_out, "energy_out");
        float* g_out = addr_or_null<float>(gnorm_out, "gnorm_out");
        float* acc_out = addr_or_null<float>(accept_out, "accept_out");
        uint8_t* acc_rec = addr_or_null<uint8_t>(accept_record, "accept_record");
        if ((e_out == nullptr) != (g_out == nullptr)) bad("give both energy_out and gnorm_out, or neither");
        if ((acc_out || acc_rec) && !mala) bad("accept outputs need mala=True");
        std::vector<float> se, sg;
        std::vector<uint8_t> sa;
        if (e_out && K > 0) {
            se.assign((size_t)(K * B), 0.0f);
            sg.assign((size_t)(K * B), 0.0f);
            a.st_energy = se.data();
            a.st_gnorm = sg.data();
        }
        if ((acc_out || acc_rec) && K > 0) {
            sa.assign((size_t)(K * B), 0);
            a.st_accept = sa.data();
        }
        run_plan(a);
        for (int64_t k = 0; k < K; ++k) {
            if (e_out) {
                double se_k = 0, sg_k = 0;
                for (int64_t b = 0; b < B; ++b) {
                    se_k += se[k * B + b];
                    sg_k += sg[k * B + b];
                }
                e_out[k] = (float)(se_k / B);
                g_out[k] = (float)(sg_k / B);
            }
            if (acc_out) {
                int64_t n = 0;
                for (int64_t b = 0; b < B; ++b) n += sa[k * B + b];
                acc_out[k] = (float)((double)n / B);
            }
        }
        if (acc_rec && K > 0) std::memcpy(acc_rec, sa.data(), (size_t)(K * B));
    }

    void eval(int64_t B, const std::vector<uint64_t>& x, uint64_t ext_u, uint64_t ext_g, uint64_t xobs, uint64_t u,
              const std::vector<uint64_t>& g, uint64_t z1, int64_t nthreads) {
        const ModelDesc& d = *desc_;
        EvalArgs a;
        std::memset(&a, 0, sizeof a);
        a.B = check_batch(B, D_);
        set_layers(x, a.x, "x");
        a.ext_u = addr_or_null<const float>(ext_u, "ext_u");
        a.ext_g = addr_or_null<const float>(ext_g, "ext_g");
        if ((a.ext_u == nullptr) != (a.ext_g == nullptr)) bad("give both ext_u and ext_g, or neither");
        a.xobs = d.decoder >= 0 ? addr<const float>(xobs, "xobs") : nullptr;
        a.u = addr<float>(u, "u");
        set_layers(g, a.g, "g");
        a.z1 = addr_or_null<float>(z1, "z1");
        a.nthreads = check_threads(nthreads);
        int rc;
        {
            py::gil_scoped_release nogil;
            rc = ops_->eval(model_, &a);
        }
        if (rc) throw std::bad_alloc();
    }

    void z1(int64_t B, const std::vector<uint64_t>& x, uint64_t z1, int64_t nthreads) {
        EvalArgs a;
        std::memset(&a, 0, sizeof a);
        a.B = check_batch(B, D_);
        set_layers(x, a.x, "x");
        a.z1 = addr<float>(z1, "z1");
        a.only_z1 = 1;
        a.nthreads = check_threads(nthreads);
        int rc;
        {
            py::gil_scoped_release nogil;
            rc = ops_->eval(model_, &a);
        }
        if (rc) throw std::bad_alloc();
    }

    std::vector<int64_t> dims() const { return std::vector<int64_t>(desc_->dims, desc_->dims + desc_->L); }
    // The build the chains run on (widest of the family): the fp32 one, or its bf16 counterpart.
    std::string isa() const { return family_[0]->name; }
    std::string precision() const { return bf16_ ? "bf16" : "fp32"; }

private:
    // One piece of a call: chains b0 .. b0 + n - 1 on build v (blocks of its block_chains).
    struct Piece {
        int v;
        int64_t b0, n;
    };

    // How a call's B chains are shared: thread t gets chains [B t / nt, B (t + 1) / nt) (the same
    // count, +-1, for every thread: no thread waits for another's padding), and runs them as whole
    // blocks of the widest build, then the rest on the cheapest mix of blocks (block_cost). Every
    // build does the same arithmetic per chain, so the result depends on neither the plan nor the
    // thread count. Batch 8 on 2 threads: one 4-chain block per thread (wide: one half-empty
    // block on one thread).
    std::vector<std::vector<Piece>> plan(int64_t B, int nt) const {
        const int nv = (int)family_.size();
        const int widest = family_[0]->block_chains;
        // best[r]: the cheapest cover of r < widest chains: (cost, build of its first block)
        std::vector<double> best(widest, 0.0);
        std::vector<int> first(widest, 0);
        for (int r = 1; r < widest; ++r) {
            best[r] = 1e300;
            for (int v = 0; v < nv; ++v) {
                const int nb = family_[v]->block_chains;
                const double c = block_cost(family_[v], widest) + (r > nb ? best[r - nb] : 0.0);
                if (c < best[r]) {
                    best[r] = c;
                    first[r] = v;
                }
            }
        }
        std::vector<std::vector<Piece>> out((size_t)nt);
        for (int t = 0; t < nt; ++t) {
            int64_t lo = B * t / nt;
            const int64_t hi = B * (t + 1) / nt;
            const int64_t full = (hi - lo) / widest * widest;
            if (full) out[t].push_back({0, lo, full});
            lo += full;
            while (lo < hi) {
                const int v = first[hi - lo];
                const int64_t n = std::min<int64_t>(hi - lo, family_[v]->block_chains);
                if (!out[t].empty() && out[t].back().v == v && out[t].back().b0 + out[t].back().n == lo)
                    out[t].back().n += n;
                else
                    out[t].push_back({v, lo, n});
                lo += n;
            }
        }
        return out;
    }

    // Runs the call by plan(): the builds' weights packed on first use, each thread's scratch kept
    // for the next call (unless another thread runs this model at the same time).
    void run_plan(const ChainArgs& a) {
        const int nt = (int)std::min<int64_t>(a.nthreads, std::max<int64_t>(a.B, 1));
        const auto pieces = plan(a.B, nt);
        const int nv = (int)family_.size();
        for (const auto& tp : pieces)
            for (const Piece& p : tp)
                if (!packed_[p.v]) {
                    packed_[p.v] = family_[p.v]->pack(desc_.get());
                    if (!packed_[p.v]) throw std::bad_alloc();
                }
        struct Busy {
            std::atomic<bool>& flag;
            bool own;
            ~Busy() {
                if (own) flag.store(false);
            }
        } busy{busy_, !busy_.exchange(true)};
        std::vector<void*> local;
        std::vector<void*>& works = busy.own ? works_ : local;
        if (works.size() < (size_t)nt * nv) works.resize((size_t)nt * nv, nullptr);
        std::atomic<int> failed{0};
        auto run_thread = [&](int t) {
            for (const Piece& p : pieces[t]) {
                void*& w = works[(size_t)t * nv + p.v];
                if (!w) w = family_[p.v]->work_alloc(packed_[p.v]);
                if (!w) {
                    failed = 1;
                    return;
                }
                family_[p.v]->chain_range(packed_[p.v], w, &a, p.b0, p.n);
            }
        };
        {
            py::gil_scoped_release nogil;
            if (nt == 1) {
                run_thread(0);
            } else {
#pragma omp parallel for schedule(static, 1) num_threads(nt)
                for (int t = 0; t < nt; ++t) run_thread(t);
            }
        }
        if (!busy.own)
            for (size_t i = 0; i < local.size(); ++i)
                if (local[i]) family_[i % nv]->work_free(local[i]);
        if (failed) throw std::bad_alloc();
    }

    template <class T>
    void set_layers(const std::vector<uint64_t>& p, T** dst, const std::string& what) const {
        check_per_layer(p.size(), desc_->L, what, "address");
        for (int l = 0; l < desc_->L; ++l) dst[l] = addr<T>(p[l], layer_name(what, l));
    }

    const IsaOps* ops_;                    // the fp32 build of eval and z1
    std::unique_ptr<ModelDesc> desc_;
    bool bf16_;                            // chains on the bf16 builds
    void* model_ = nullptr;                // packed for ops_ (fp32: = packed_[0])
    // the builds a chain may combine, widest first: ops_ and its narrow companions, or (bf16) their
    // bf16 counterparts
    std::vector<const IsaOps*> family_;
    std::vector<void*> packed_;            // the model packed for each, on first use
    std::vector<void*> works_;             // [thread * family size + build]: scratch kept between calls
    std::atomic<bool> busy_{false};        // a call is using works_
    int D_ = 0;
};

void philox_fill(uint64_t seed, uint64_t offset, int64_t n, uint64_t out, int64_t nthreads, bool normal) {
    check_count(n, 0, kMaxElems, "n");
    check_counters(offset, (unsigned __int128)n, "philox");
    float* o = n ? addr<float>(out, "out") : nullptr;
    const int nt = check_threads(nthreads);
    if (n == 0) return;
    const IsaOps* ops = g_isa;
    py::gil_scoped_release nogil;
    (normal ? ops->randn : ops->rand)(seed, offset, n, o, nt);
}

void philox_uniform_pairs(uint64_t seed, uint64_t offset, int64_t n, uint64_t u1, uint64_t u2, int64_t nthreads) {
    check_count(n, 0, kMaxElems, "n");
    check_counters(offset, (unsigned __int128)n, "philox");
    float* a = n ? addr<float>(u1, "u1") : nullptr;
    float* b = n ? addr<float>(u2, "u2") : nullptr;
    const int nt = check_threads(nthreads);
    if (n == 0) return;
    const IsaOps* ops = g_isa;
    py::gil_scoped_release nogil;
    ops->uniform_pairs(seed, offset, n, a, b, nt);
}

// MALA's accept step for a chain loop that gets its gradients elsewhere (autograd): per chain,
// log alpha = U(x) - U(x') - sum_l |x_l - x'_l + h_l g'_l|^2 / den_l + |xi|^2 / 2 (the Gaussian
// proposal's two densities, den_l = 2 (s_l tau)^2), accepted when log(uniform) < log alpha; an
// accepted chain takes x', g' and U(x') in place of x, g and U(x). The sums run in double, chain by
// chain in feature order. One call instead of the ~20 small torch ops the same arithmetic takes in
// Python.
void mala_select(int64_t B, const std::vector<int64_t>& dims, const std::vector<uint64_t>& x,
                 const std::vector<uint64_t>& prop, const std::vector<uint64_t>& g, const std::vector<uint64_t>& g_prop,
                 const std::vector<uint64_t>& noise, uint64_t u, uint64_t u_prop, uint64_t uniform,
                 const std::vector<double>& h, const std::vector<double>& den, uint64_t accepted, int64_t nthreads) {
    const int L = (int)check_count((int64_t)dims.size(), 1, kMaxLatent, "number of layers");
    std::vector<int64_t> d(L);
    int64_t D = 0;
    for (int l = 0; l < L; ++l) D += (d[l] = check_count(dims[l], 1, kMaxWidth, "dim " + std::to_string(l)));
    check_batch(B, D);
    for (auto* v : {&x, &prop, &g, &g_prop, &noise}) check_per_layer(v->size(), L, "layer addresses", "address");
    std::vector<float*> xs(L), gs(L);
    std::vector<const float*> ps(L), gps(L), ns(L);
    std::vector<double> hs(L), inv_den(L);
    check_per_layer(h.size(), L, "h", "value");
    check_per_layer(den.size(), L, "den", "value");
    for (int l = 0; l < L; ++l) {
        xs[l] = addr<float>(x[l], layer_name("x", l));
        ps[l] = addr<const float>(prop[l], layer_name("prop", l));
        gs[l] = addr<float>(g[l], layer_name("g", l));
        gps[l] = addr<const float>(g_prop[l], layer_name("g_prop", l));
        ns[l] = addr<const float>(noise[l], layer_name("noise", l));
        hs[l] = (double)finite_float(h[l], "h");
        const float dn = finite_float(den[l], "den");
        if (!(dn > 0.0f)) bad("den must be > 0");
        inv_den[l] = 1.0 / (double)dn;
    }
    float* uu = addr<float>(u, "u");
    const float* up = addr<const float>(u_prop, "u_prop");
    const float* un = addr<const float>(uniform, "uniform");
    float* acc = addr<float>(accepted, "accepted");
    const int nt = check_threads(nthreads);
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) num_threads(nt) if (B * D > 65536)
    for (int64_t b = 0; b < B; ++b) {
        double log_alpha = (double)uu[b] - (double)up[b];
        for (int l = 0; l < L; ++l) {
            const int64_t o = b * d[l];
            double fwd = 0.0, bwd = 0.0;
            for (int64_t j = 0; j < d[l]; ++j) {
                const double n = ns[l][o + j];
                const double r = (double)xs[l][o + j] - (double)ps[l][o + j] + hs[l] * (double)gps[l][o + j];
                fwd += n * n;
                bwd += r * r;
            }
            log_alpha += 0.5 * fwd - bwd * inv_den[l];
        }
        const bool take = std::log((double)un[b]) < log_alpha;
        acc[b] = take ? 1.0f : 0.0f;
        if (!take) continue;
        uu[b] = up[b];
        for (int l = 0; l < L; ++l) {
            const int64_t o = b * d[l];
            std::memcpy(xs[l] + o, ps[l] + o, sizeof(float) * d[l]);
            std::memcpy(gs[l] + o, gps[l] + o, sizeof(float) * d[l]);
        }
    }
}

void multi_layer_update(int64_t B, const std::vector<int64_t>& dims, const std::vector<uint64_t>& x,
                        const std::vector<uint64_t>& g, const std::vector<uint64_t>& out,
                        const std::vector<uint64_t>& noise, uint64_t uniform, const std::vector<double>& h,
                        const std::vector<double>& c, uint64_t seed, uint64_t offset, int64_t nthreads) {
    UpdateArgs a;
    std::memset(&a, 0, sizeof a);
    check_update_scalars(a, B, dims, x, g, out, noise, uniform != 0, h, c, seed, offset);
    for (int l = 0; l < a.L; ++l) {
        a.x[l] = addr<const float>(x[l], layer_name("x", l));
        a.g[l] = addr<const float>(g[l], layer_name("g", l));
        a.out[l] = addr<float>(out[l], layer_name("out", l));
        a.noise[l] = noise.empty() ? nullptr : addr<float>(noise[l], layer_name("noise", l));
    }
    a.uniform = addr_or_null<float>(uniform, "uniform");
    a.nthreads = check_threads(nthreads);
    const IsaOps* ops = g_isa;
    py::gil_scoped_release nogil;
    ops->update(&a);
}

void activation(int64_t act, double param, uint64_t in, int64_t n, uint64_t value, uint64_t deriv) {
    const int code = check_activation_code(act, "activation code");
    const float p = check_activation_param(code, code, param, "activation parameter");
    check_count(n, 0, kMaxElems, "n");
    if (n == 0) return;
    const float* i = addr<const float>(in, "in");
    float* v = addr<float>(value, "value");
    float* d = addr<float>(deriv, "deriv");
    g_isa->activation(code, p, i, n, v, d);
}

// Whether every pair of byte ranges (a[i], b[i], n[i]) holds the same bytes: the content test of
// tensor_cache.py (a weight compared with its copy), one call for a whole weight set.
bool same_bytes(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b, const std::vector<uint64_t>& n) {
    if (a.size() != b.size() || a.size() != n.size()) bad("same_bytes: give one address and size per range");
    for (size_t i = 0; i < a.size(); ++i) {
        if (n[i] == 0) continue;
        const void* pa = addr<const unsigned char>(a[i], "a");
        const void* pb = addr<const unsigned char>(b[i], "b");
        if (std::memcmp(pa, pb, (size_t)n[i]) != 0) return false;
    }
    return true;
}

}  // namespace
}  // namespace jebm

PYBIND11_MODULE(_C, m) {
    using namespace jebm;
    m.doc() = "jebm CPU kernels (OpenMP, runtime-dispatched SIMD); raw-address bindings, see csrc/bindings.cpp";
    init_isa();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const std::bad_alloc&) {
            PyErr_SetString(PyExc_MemoryError, "jebm_kernels._C: out of memory");
        }
    });

    m.def("isa", []() { return std::string(g_isa->name); }, "The instruction set the kernels run with.");
    m.def("available_isas", &usable_isas, "Instruction sets this CPU can run, best first.");
    m.def("bf16_available", []() { return bf16_unavailable().empty(); },
          "Whether Model(..., bf16=True) can be made: the bf16 builds are compiled, the CPU has AVX512-BF16 "
          "(and AVX-512 F/DQ/BW/VL), and the current instruction set is an avx512 build.");
    m.def("set_isa", &set_isa, py::arg("name"), "Run later calls with 'avx512', 'avx2', 'avx2-narrow' or 'generic' kernels only (the best one "
          "again re-enables the narrow kernels for small batches).");
    m.def("block_chains", []() { return g_isa->block_chains; }, "Chains per block in the fused kernels.");
    m.def("vector_width", []() { return g_isa->vector_width; });
    m.def("act_codes", &activation_codes_dict,
          "Activation name -> code (csrc/generated/activation_codes.h, from jebm_kernels/activation_table.py).");
    m.def("limits", []() {
        py::dict d = shared_limits_dict();
        d["max_threads"] = (long long)kMaxThreads;
        return d;
    }, "The sizes the kernels accept (inclusive maxima).");
    m.def("philox_randn",
          [](uint64_t seed, uint64_t offset, int64_t n, uint64_t out, int64_t nthreads) {
              philox_fill(seed, offset, n, out, nthreads, true);
          },
          py::arg("seed"), py::arg("offset"), py::arg("n"), py::arg("out"), py::arg("nthreads") = 1,
          "Writes n float32 normals, tl.randn(seed, offset + i), at address out.");
    m.def("philox_rand",
          [](uint64_t seed, uint64_t offset, int64_t n, uint64_t out, int64_t nthreads) {
              philox_fill(seed, offset, n, out, nthreads, false);
          },
          py::arg("seed"), py::arg("offset"), py::arg("n"), py::arg("out"), py::arg("nthreads") = 1,
          "Writes n float32 uniforms, tl.rand(seed, offset + i), at address out.");
    m.def("philox_uniform_pairs", &philox_uniform_pairs, py::arg("seed"), py::arg("offset"), py::arg("n"), py::arg("u1"),
          py::arg("u2"), py::arg("nthreads") = 1,
          "Writes the two float32 uniforms Box-Muller takes for tl.randn(seed, offset + i) (Philox words 0 and 1) at "
          "addresses u1 and u2.");
    m.def("mala_select", &mala_select, py::arg("B"), py::arg("dims"), py::arg("x"), py::arg("prop"), py::arg("g"),
          py::arg("g_prop"), py::arg("noise"), py::arg("u"), py::arg("u_prop"), py::arg("uniform"), py::arg("h"),
          py::arg("den"), py::arg("accepted"), py::arg("nthreads") = 1,
          "MALA's accept step in place: chains with log(uniform) < log alpha take prop, g_prop, u_prop; accepted[b] = "
          "1 or 0.");
    m.def("multi_layer_update", &multi_layer_update, py::arg("B"), py::arg("dims"), py::arg("x"), py::arg("g"),
          py::arg("out"), py::arg("noise"), py::arg("uniform"), py::arg("h"), py::arg("c"), py::arg("seed"),
          py::arg("offset"), py::arg("nthreads") = 1,
          "out_l = (x_l - h_l g_l) + c_l xi_l for every layer, xi at the problem.py noise layout; optionally "
          "writes the normals and the B MALA uniforms (counters offset + B*D + b).");
    m.def("same_bytes", &same_bytes, py::arg("a"), py::arg("b"), py::arg("n"),
          "Whether each pair of byte ranges (addresses a[i], b[i], n[i] bytes) holds the same bytes.");
    m.def("activation", &activation, py::arg("act"), py::arg("param"), py::arg("inp"), py::arg("n"),
          py::arg("value"), py::arg("deriv"), "An activation's value and derivative at n floats (for tests).");

    py::class_<Model>(m, "Model",
                      "An energy (prior, optional MLP decoder) with its weights packed for this CPU (here for the "
                      "current instruction set, on first use for its narrow companions or, with bf16=True, the bf16 builds "
                      "its chains run on); jebm_kernels' cpu backend "
                      "keeps one per version of the weights, and each thread's scratch is kept between calls.")
        .def(py::init<const std::vector<int64_t>&, const std::vector<MLPArg>&, const std::vector<int64_t>&, int64_t,
                      const std::vector<int64_t>&, const std::vector<double>&, int64_t, double,
                      const std::vector<double>&, const std::vector<double>&, int64_t, double, bool>(),
             py::arg("dims"), py::arg("mlps"), py::arg("terms"), py::arg("joint"), py::arg("gaussians"),
             py::arg("sigma_floors"), py::arg("space"), py::arg("energy_sign"), py::arg("base_sigma"),
             py::arg("prior_sigma"), py::arg("decoder"), py::arg("sigma_x"), py::arg("bf16") = false,
             "bf16=True: chain runs its GEMMs in bf16 (AVX512-BF16, fp32 sums; ValueError where "
             "bf16_available() is False); eval and z1 stay fp32.")
        .def("chain", &Model::chain, py::arg("B"), py::arg("x"), py::arg("out"), py::arg("K"), py::arg("h"),
             py::arg("c"), py::arg("mala_den"), py::arg("mala"), py::arg("seed"), py::arg("offset"), py::arg("xobs"),
             py::arg("energy_out"), py::arg("gnorm_out"), py::arg("accept_out"), py::arg("accept_record"),
             py::arg("nthreads") = 1, "All K steps of every chain, fused.")
        .def("eval", &Model::eval, py::arg("B"), py::arg("x"), py::arg("ext_u"), py::arg("ext_g"), py::arg("xobs"),
             py::arg("u"), py::arg("g"), py::arg("z1"), py::arg("nthreads") = 1,
             "U(x) and dU/dx, plus an external energy and dU/dz_1 (a conv decoder's, from autograd).")
        .def("z1", &Model::z1, py::arg("B"), py::arg("x"), py::arg("z1"), py::arg("nthreads") = 1,
             "z_1 of the sampled variables (eps-space: through the Gaussians).")
        .def_property_readonly("dims", &Model::dims)
        .def_property_readonly("isa", &Model::isa, "The build chain runs on (its widest).")
        .def_property_readonly("precision", &Model::precision, "'bf16' or 'fp32': the chains' GEMMs.");
}
