// jebm_kernels._cuda: pybind11 bindings for the CUDA kernels (cuda_update.cu, cuda_prior_chain.cu).
//
// As jebm_kernels._C does: every binding takes raw device addresses (Python ints from
// tensor.data_ptr()), sizes and the stream (torch.cuda.current_stream().cuda_stream) and never a
// torch tensor, so this module needs neither torch's C++ ABI nor torch's CUDA headers; it links
// the CUDA runtime statically. This file is compiled by the host C++ compiler and includes no CUDA
// header: every runtime call goes through cuda_kernels.h.
//
// Validation happens before any address is handed to a kernel: sizes (non-negative, within
// limits, consistent), list lengths, null and misaligned addresses, finite scalars, 64-bit counter
// overflow (all shared with the CPU bindings: binding_checks.h), weight-buffer offsets against the
// buffer's length, and for every address cudaPointerGetAttributes: it must be device (or managed)
// memory of the current device, so a CPU tensor's address is refused instead of faulting. A bad argument raises ValueError (from
// std::invalid_argument), a wrongly typed one TypeError (pybind11's conversion), a CUDA runtime
// error RuntimeError with the runtime's message. jebm_kernels/prior_chain/cuda.py and update/cuda.py check dtype, device, shape
// and contiguity of every tensor first.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "binding_checks.h"
#include "binding_tables.h"
#include "cuda_kernels.h"

namespace py = pybind11;

namespace jebm {
namespace cuda {
namespace {

void check_cuda(const char* err, const std::string& what) {
    if (err) throw std::runtime_error("jebm_kernels._cuda: " + what + ": CUDA error: " + err);
}

int current(int* sm_count = nullptr) {
    int dev = 0, sms = 0;
    check_cuda(current_device(&dev, &sms), "querying the current device");
    if (sm_count) *sm_count = sms;
    return dev;
}

// A device address of the current device (or managed memory), aligned for T.
template <class T>
T* dev_addr(uint64_t p, const std::string& what, int device) {
    T* ptr = aligned_address<T>(p, what);
    int kind = 0, dev = -1;
    check_cuda(pointer_info(ptr, &kind, &dev), "inspecting " + what);
    if (kind == 0) bad(what + " is not CUDA device memory (a CPU tensor's address?)");
    if (kind == 1 && dev != device)
        bad(what + " lives on cuda:" + std::to_string(dev) + " but the current device is cuda:" + std::to_string(device));
    return ptr;
}

template <class T>
T* dev_addr_or_null(uint64_t p, const std::string& what, int device) {
    return p == 0 ? nullptr : dev_addr<T>(p, what, device);
}

constexpr int64_t kMaxWeights = int64_t(1) << 34;
// sizes, W^T offsets, W offsets, bias offsets (-1: none), activation, its parameter, output activation
using MLPArg = std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>,
                          int64_t, double, int64_t>;

class Model {
public:
    Model(const std::vector<int64_t>& dims, const std::vector<MLPArg>& mlps, const std::vector<int64_t>& terms,
          int64_t joint, const std::vector<int64_t>& gauss, const std::vector<double>& floors, int64_t space,
          double energy_sign, const std::vector<double>& base_sigma, const std::vector<double>& prior_sigma,
          uint64_t weights, int64_t weights_numel)
        : m_(new ModelDev()) {
        ModelDev& m = *m_;
        std::memset(&m, 0, sizeof(ModelDev));
        numel_ = check_count(weights_numel, 1, kMaxWeights, "weights_numel");
        m.n_mlps = (int)check_count((int64_t)mlps.size(), 0, kMaxMLPs, "number of MLPs");
        int n_linear = 0;
        int maxw = 1;
        std::vector<CheckedMLP> checked;
        for (int i = 0; i < m.n_mlps; ++i) {
            const auto& [sizes, wt, w, b, act, param, out_act] = mlps[i];
            const std::string nm = "MLP " + std::to_string(i);
            const CheckedMLP& c = checked.emplace_back(check_mlp(sizes, act, param, out_act, nm));
            const int nl = c.n_layers;
            if ((int)wt.size() != nl || (int)w.size() != nl || (int)b.size() != nl)
                bad(nm + ": needs one W^T, one W and one bias offset (-1 = no bias) per layer: " + std::to_string(nl) +
                    " layers");
            if (n_linear + nl > kMaxLinearTotal)
                bad("more than " + std::to_string(kMaxLinearTotal) + " Linear layers in one model");
            m.mlp[i].first = n_linear;
            m.mlp[i].count = nl;
            for (int l = 0; l < nl; ++l) {
                LinearDev& ln = m.lin[n_linear + l];
                ln.n_in = c.sizes[l];
                ln.n_out = c.sizes[l + 1];
                const int64_t nk = (int64_t)ln.n_in * ln.n_out;
                const std::string li = nm + " layer " + std::to_string(l);
                ln.wt_off = in_buffer(wt[l], nk, li + ": W^T offset");
                ln.w_off = in_buffer(w[l], nk, li + ": W offset");
                ln.b_off = b[l] == -1 ? -1 : in_buffer(b[l], ln.n_out, li + ": bias offset");
                ln.act = l + 1 < nl ? c.act : c.out_act;
                ln.param = c.param;
                if (ln.n_in > maxw) maxw = ln.n_in;
                if (ln.n_out > maxw) maxw = ln.n_out;
            }
            n_linear += nl;
        }
        m.n_linear = n_linear;
        const PriorLayout p = check_prior_layout(dims, checked, terms, joint, gauss, floors, space, energy_sign,
                                                 base_sigma, prior_sigma);
        m.L = p.L;
        m.D = p.D;
        int max_d = 1;
        for (int l = 0; l < m.L; ++l) {
            m.dims[l] = p.dims[l];
            m.off[l] = l == 0 ? 0 : m.off[l - 1] + m.dims[l - 1];
            if (m.dims[l] > max_d) max_d = m.dims[l];
            m.term[l] = p.term[l];
            m.gauss[l] = p.gauss[l];
            m.floor[l] = p.sigma_floor[l];
        }
        m.off[m.L] = m.D;
        m.joint = p.joint;
        m.has_gauss = p.n_gauss ? 1 : 0;
        m.space_eps = p.space;
        m.sign = p.energy_sign;
        // the pure quadratic terms, folded: U += q_l |x_l|^2 / 2
        double q[kMaxLatent] = {0};
        if (p.has_base) {
            for (int l = 0; l < m.L; ++l)
                if (!std::isinf(p.base_sigma[l])) q[l] = 1.0 / (p.base_sigma[l] * p.base_sigma[l]);
        } else if (m.space_eps) {
            for (int l = 0; l < m.L; ++l) q[l] = 1.0;  // |eps|^2 / 2
        } else {
            q[m.L - 1] = 1.0;  // the top N(0, I)
        }
        for (int l = 0; l < m.L && p.has_prior_sigma; ++l) q[l] += 1.0 / (p.prior_sigma[l] * p.prior_sigma[l]);
        for (int l = 0; l < m.L; ++l) m.q[l] = finite_float(q[l], "a quadratic coefficient (1 / sigma^2)");
        // scratch rows of one chain
        int64_t r = 0;
        auto take = [&](int64_t n) {
            const int64_t at = r;
            r += n;
            return at;
        };
        m.rX = take(m.D);
        m.rG = take(m.D);
        m.rXP = take(m.D);
        m.rGP = take(m.D);
        m.rZ = take(m.D);
        m.rGZ = take(m.D);
        m.rGO = take(2 * (int64_t)max_d);
        m.rT0 = take(maxw);
        m.rT1 = take(maxw);
        for (int i = 0; i < n_linear; ++i) {
            LinearDev& ln = m.lin[i];
            ln.out_row = take(ln.n_out);
            ln.der_row = ln.act == ACT_IDENTITY ? -1 : take(ln.n_out);
        }
        m.rows = r;
        weights_ = dev_addr<const float>(weights, "weights", current());
    }

    // (chains per block, grid, chain blocks, workspace bytes) for B chains on the current device.
    std::tuple<int, int64_t, int64_t, int64_t> plan(int64_t B) const {
        check_count(B, 1, kMaxBatch, "batch B");
        int sms = 0;
        current(&sms);
        if (sms < 1) sms = 1;
        const int chains = B > (int64_t)kChainsSmall * sms ? kChainsLarge : kChainsSmall;
        const int64_t n_blocks = (B + chains - 1) / chains;
        const int64_t grid = n_blocks < 2 * (int64_t)sms ? n_blocks : 2 * (int64_t)sms;
        const int64_t bytes = grid * m_->rows * chains * (int64_t)sizeof(float);
        return {chains, grid, n_blocks, bytes};
    }

    void chain(int64_t B, const std::vector<uint64_t>& x, const std::vector<uint64_t>& out, int64_t K,
               const std::vector<double>& h, const std::vector<double>& c, const std::vector<double>& mala_den,
               bool mala, uint64_t seed, uint64_t offset, uint64_t workspace, int64_t workspace_bytes,
               uint64_t stats, int64_t stats_numel, uint64_t accept_record, uint64_t stream, uint64_t philox) {
        const ModelDev& m = *m_;
        const int dev = current();
        ChainArgsDev a;
        std::memset(&a, 0, sizeof a);
        check_chain_scalars(a, m.L, m.D, B, K, h, c, mala_den, mala, seed, offset);
        layers(x, a.x, "x", dev);
        layers(out, a.out, "out", dev);
        const auto [chains, grid, n_blocks, bytes] = plan(B);
        a.n_blocks = n_blocks;
        if (workspace_bytes < bytes)
            bad("workspace has " + std::to_string(workspace_bytes) + " bytes, the plan needs " + std::to_string(bytes) +
                " (Model.plan(B))");
        char* ws = dev_addr<char>(workspace, "workspace", dev);
        if (workspace % 16 != 0) bad("workspace must be 16-byte aligned");
        a.scratch = reinterpret_cast<float*>(ws);
        a.stats = dev_addr_or_null<float>(stats, "stats", dev);
        if (a.stats && stats_numel < (K > 0 ? K : 1) * n_blocks * 3)
            bad("stats needs K * n_blocks * 3 = " + std::to_string(K * n_blocks * 3) + " floats, got " +
                std::to_string(stats_numel));
        a.accept = dev_addr_or_null<uint8_t>(accept_record, "accept_record", dev);
        if (a.accept && !mala) bad("accept_record needs mala=True");
        a.weights = weights_;
        a.philox = dev_addr_or_null<const int64_t>(philox, "philox", dev);
        const char* err;
        {
            py::gil_scoped_release nogil;
            err = launch_prior_chain(m, a, chains, grid,
                                     reinterpret_cast<void*>(static_cast<uintptr_t>(stream)));
        }
        check_cuda(err, "launching the prior chain");
    }

    std::vector<int64_t> dims() const { return std::vector<int64_t>(m_->dims, m_->dims + m_->L); }
    int64_t rows() const { return m_->rows; }

private:
    int64_t in_buffer(int64_t off, int64_t n, const std::string& what) const {
        if (off < 0 || off > numel_ - n)
            bad(what + " " + std::to_string(off) + " with " + std::to_string(n) + " floats runs outside the weight buffer of " +
                std::to_string(numel_) + " floats");
        return off;
    }
    template <class T>
    void layers(const std::vector<uint64_t>& p, T** dst, const std::string& what, int dev) const {
        check_per_layer(p.size(), m_->L, what, "address");
        for (int l = 0; l < m_->L; ++l) dst[l] = dev_addr<T>(p[l], layer_name(what, l), dev);
    }

    std::unique_ptr<ModelDev> m_;
    int64_t numel_ = 0;
    const float* weights_ = nullptr;
};

void multi_layer_update(int64_t B, const std::vector<int64_t>& dims, const std::vector<uint64_t>& x,
                        const std::vector<uint64_t>& g, const std::vector<uint64_t>& out,
                        const std::vector<uint64_t>& noise, uint64_t uniform, const std::vector<double>& h,
                        const std::vector<double>& c, uint64_t seed, uint64_t offset, uint64_t philox,
                        uint64_t stream) {
    UpdateArgsDev a;
    std::memset(&a, 0, sizeof a);
    check_update_scalars(a, B, dims, x, g, out, noise, uniform != 0, h, c, seed, offset);
    int64_t start = 0;  // layer l's first noise counter: B * (d_1 + ... + d_{l-1})
    for (int l = 0; l < a.L; ++l) {
        a.start[l] = start;
        start += B * a.dims[l];
    }
    a.total = start;  // B * D
    const int dev = current();
    for (int l = 0; l < a.L; ++l) {
        a.x[l] = dev_addr<const float>(x[l], layer_name("x", l), dev);
        a.g[l] = dev_addr<const float>(g[l], layer_name("g", l), dev);
        a.out[l] = dev_addr<float>(out[l], layer_name("out", l), dev);
        a.noise[l] = noise.empty() ? nullptr : dev_addr<float>(noise[l], layer_name("noise", l), dev);
    }
    a.uniform = dev_addr_or_null<float>(uniform, "uniform", dev);
    a.philox = dev_addr_or_null<const int64_t>(philox, "philox", dev);
    const char* err;
    {
        py::gil_scoped_release nogil;
        err = launch_update(a, reinterpret_cast<void*>(static_cast<uintptr_t>(stream)));
    }
    check_cuda(err, "launching the multi-layer update");
}

}  // namespace
}  // namespace cuda
}  // namespace jebm

PYBIND11_MODULE(_cuda, m) {
    using namespace jebm;
    using namespace jebm::cuda;
    m.doc() = "jebm CUDA kernels: raw-address bindings, see csrc/cuda_bindings.cpp";
    m.def("limits", []() {
        py::dict d = shared_limits_dict();
        d["max_linear_total"] = (int)kMaxLinearTotal;
        d["chains_per_block"] = py::make_tuple(kChainsSmall, kChainsLarge);
        d["threads"] = kThreads;
        return d;
    }, "The sizes the kernels accept (inclusive maxima).");
    m.def("act_codes", &activation_codes_dict,
          "Activation name -> code (csrc/generated/activation_codes.h, from jebm_kernels/activation_table.py).");
    m.def("device", []() {
        int sms = 0;
        const int dev = current(&sms);
        return py::make_tuple(dev, sms);
    }, "(current device, its SM count); RuntimeError without a usable GPU.");
    m.def("multi_layer_update", &multi_layer_update, py::arg("B"), py::arg("dims"), py::arg("x"), py::arg("g"),
          py::arg("out"), py::arg("noise"), py::arg("uniform"), py::arg("h"), py::arg("c"), py::arg("seed"),
          py::arg("offset"), py::arg("philox"), py::arg("stream"),
          "out_l = (x_l - h_l g_l) + c_l xi_l for every layer in one launch on `stream`, xi at the problem.py "
          "noise layout; optionally writes the normals and the B MALA uniforms (counters offset + B*D + b). "
          "philox: 0, or the address of a device int64 [seed, base offset] read by the kernel (CUDA graphs); "
          "the counters then start at base + offset and `seed` is ignored.");
    py::class_<Model>(m, "Model",
                      "A prior energy (PriorSpec + prior_sigma) over a packed device weight buffer: per Linear, "
                      "W^T [in, out], W [out, in] and the bias at the given float offsets.")
        .def(py::init<const std::vector<int64_t>&, const std::vector<MLPArg>&, const std::vector<int64_t>&, int64_t,
                      const std::vector<int64_t>&, const std::vector<double>&, int64_t, double,
                      const std::vector<double>&, const std::vector<double>&, uint64_t, int64_t>(),
             py::arg("dims"), py::arg("mlps"), py::arg("terms"), py::arg("joint"), py::arg("gaussians"),
             py::arg("sigma_floors"), py::arg("space"), py::arg("energy_sign"), py::arg("base_sigma"),
             py::arg("prior_sigma"), py::arg("weights"), py::arg("weights_numel"))
        .def("plan", &Model::plan, py::arg("B"),
             "(chains per block, grid, chain blocks, workspace bytes) for B chains on the current device.")
        .def("chain", &Model::chain, py::arg("B"), py::arg("x"), py::arg("out"), py::arg("K"), py::arg("h"),
             py::arg("c"), py::arg("mala_den"), py::arg("mala"), py::arg("seed"), py::arg("offset"),
             py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stats"), py::arg("stats_numel"),
             py::arg("accept_record"), py::arg("stream"), py::arg("philox") = 0,
             "All K steps of every chain in one launch on `stream`; stats (K x blocks x 3 floats: sums of U, "
             "|grad U|, accepts per block) and accept_record (uint8 [K, B]) are optional (0). philox: 0, or the "
             "address of a device int64 [seed, base offset] the kernel reads (counters from base + offset).")
        .def_property_readonly("dims", &Model::dims)
        .def_property_readonly("rows", &Model::rows, "Scratch floats per chain.");
}
