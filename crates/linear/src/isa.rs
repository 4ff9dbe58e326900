//! Which kernel path the CPU can run, detected once and passed down as a value.
//!
//! An [`Isa`] other than [`Isa::portable`] holds a proof token from the x86 kernel module
//! (`kernel::x86`), and those tokens are only made by its run-time feature detection. So a
//! kernel entry point that receives an `Isa` needs no check of its own: the value could not
//! exist on a CPU without the features.

use std::fmt;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use crate::kernel::{x86, x86_512, x86_amx, x86_bf16};

/// A kernel path: the SIMD instruction sets the kernels may use. (The GEMM regime runs our
/// AVX-512F kernel on the paths that have it and the `gemm` crate, which dispatches on the CPU
/// by itself, on the others.)
///
/// Obtain one with [`Isa::detect`] (the best path this CPU runs, detected once per process),
/// [`Isa::portable`] (plain Rust, every CPU) or [`Isa::supported`] (every path this CPU
/// runs). There is no other constructor, so holding an `Isa` that names a SIMD path proves
/// the CPU has those features.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isa(Path);

/// The paths, each x86 one carrying the token that proves its features.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Path {
    /// Portable Rust; the compiler vectorises it for the build target (SSE2 on x86-64).
    Portable,
    /// AVX2 + FMA: f32 and bf16 weights; f16 weights take the portable loop.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(x86::Avx2Fma),
    /// AVX2 + FMA + F16C: every weight dtype.
    #[cfg(target_arch = "x86_64")]
    Avx2FmaF16c(x86::Avx2FmaF16c),
    /// AVX-512 F/BW on top: the GEMM regime's packed f32 kernel and 512-bit matrix-vector
    /// kernels for f32, f16 and bf16 weights; e4m3 weights through byte lookups where the CPU
    /// also has VBMI (`kernel::x86_512_e4m3`); the 8/4-bit formats' integer dot products with
    /// `vpdpbusd` where it has VNNI (`kernel::x86_512_act8`), as `Avx2FmaF16c` otherwise.
    #[cfg(target_arch = "x86_64")]
    Avx512F(x86_512::Avx512F),
    /// AVX512-BF16 on top: `vdpbf16ps` for bf16 weights with bf16-rounded activations
    /// ([`crate::Matrix::Bf16Activations`]).
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16(x86_bf16::Avx512Bf16),
    /// AMX-TILE and AMX-BF16 on top, with the OS's permission for the tile registers: the
    /// bf16-activation products on tiles (`kernel::x86_amx`) in place of `vdpbf16ps`, at
    /// every number of rows when `K` is a multiple of 32.
    #[cfg(target_arch = "x86_64")]
    AmxBf16(x86_amx::AmxBf16),
}

impl Isa {
    /// The best path this CPU runs. Detected on the first call and cached for the process.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect_uncached)
    }

    /// The portable fallback, valid on every CPU: forces the plain-Rust loops (for tests,
    /// benchmarks, or ruling the SIMD kernels out).
    pub const fn portable() -> Isa {
        Isa(Path::Portable)
    }

    /// Every path this CPU runs, best first, ending with [`Isa::portable`]: the detected one
    /// and each narrower one (a subset of proven features is proven too).
    pub fn supported() -> Vec<Isa> {
        let mut out = vec![Isa::detect()];
        while let Some(next) = out.last().and_then(|isa| isa.narrower()) {
            out.push(next);
        }
        out
    }

    /// Whether this path uses AVX2 and FMA (true only after detection found them).
    pub fn has_avx2_fma(self) -> bool {
        !self.is_portable()
    }

    /// Whether this is the portable fallback.
    pub fn is_portable(self) -> bool {
        self.0 == Path::Portable
    }

    /// Whether products of more than [`Isa::quant_row_kernel_rows`] rows with 8-bit and 4-bit
    /// weights ([`crate::QuantMatrix`]) round the activations to 8 bits per group on this path,
    /// as products of fewer rows always do: true where AVX512-VNNI runs their integer GEMM
    /// (the paths whose matrices are held in panels); elsewhere they take f32 activations (the
    /// product with the dequantised matrix).
    pub fn rounds_quant_gemm_activations(self) -> bool {
        self.quant_panels()
    }

    /// Up to how many activation rows products with 8-bit and 4-bit weights
    /// ([`crate::QuantMatrix`] in the row layout) take the row kernels: activations rounded to
    /// 8 bits per group, each row's result the same bits whatever the other rows. 64 on AVX2
    /// without AVX512-VNNI, where they beat the f32 GEMM over widened weights up to about
    /// that many rows (1.0-1.8x at 64 rows on a Zen 3, 0.6-0.9x for 8-bit weights at 96 and
    /// 128: `benchmarks/README.md`); [`crate::GEMV_MAX_ROWS`] elsewhere.
    pub fn quant_row_kernel_rows(self) -> usize {
        if self.is_portable() || self.quant_panels() {
            crate::GEMV_MAX_ROWS
        } else {
            2 * crate::GEMV_MAX_ROWS
        }
    }

    /// Whether the 8/6/5/4-bit matrices go to panels of interleaved rows on this path
    /// ([`crate::QuantMatrix::for_isa`]): where AVX512-VNNI runs the panel kernels. (The
    /// same paths as [`Isa::rounds_quant_gemm_activations`], asked for the layout.)
    pub(crate) fn quant_panels(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.avx512_vnni().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// A short name: `"amx-bf16"`, `"avx512bf16"`, `"avx512f"`, `"avx2+fma+f16c"`, `"avx2+fma"` or
    /// `"portable"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Path::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma(_) => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Path::Avx2FmaF16c(_) => "avx2+fma+f16c",
            #[cfg(target_arch = "x86_64")]
            Path::Avx512F(_) => "avx512f",
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16(_) => "avx512bf16",
            #[cfg(target_arch = "x86_64")]
            Path::AmxBf16(_) => "amx-bf16",
        }
    }

    /// The AVX2 + FMA proof, when this path has one (the kernel's dispatch asks).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx2_fma(self) -> Option<x86::Avx2Fma> {
        match self.0 {
            Path::Portable => None,
            Path::Avx2Fma(t) => Some(t),
            Path::Avx2FmaF16c(t) => Some(t.avx2_fma()),
            Path::Avx512F(t) => Some(t.avx2_fma_f16c().avx2_fma()),
            Path::Avx512Bf16(t) => Some(t.avx512f().avx2_fma_f16c().avx2_fma()),
            Path::AmxBf16(t) => Some(t.avx512_bf16().avx512f().avx2_fma_f16c().avx2_fma()),
        }
    }

    /// The AVX2 + FMA + F16C proof, when this path has one.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx2_fma_f16c(self) -> Option<x86::Avx2FmaF16c> {
        match self.0 {
            Path::Avx2FmaF16c(t) => Some(t),
            Path::Avx512F(t) => Some(t.avx2_fma_f16c()),
            Path::Avx512Bf16(t) => Some(t.avx512f().avx2_fma_f16c()),
            Path::AmxBf16(t) => Some(t.avx512_bf16().avx512f().avx2_fma_f16c()),
            Path::Portable | Path::Avx2Fma(_) => None,
        }
    }

    /// The AVX-512 F/BW proof, when this path has one.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512f(self) -> Option<x86_512::Avx512F> {
        match self.0 {
            Path::Avx512F(t) => Some(t),
            Path::Avx512Bf16(t) => Some(t.avx512f()),
            Path::AmxBf16(t) => Some(t.avx512_bf16().avx512f()),
            _ => None,
        }
    }

    /// The AVX512-VBMI proof, when this path has AVX-512 and the CPU the VBMI extension (the
    /// e4m3 kernel's byte lookups; not a path of its own: every AVX-512 path uses it where
    /// the CPU has it).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512_vbmi(self) -> Option<x86_512::Avx512Vbmi> {
        self.avx512f().and_then(x86_512::Avx512F::vbmi)
    }

    /// The AVX512-VNNI proof, when this path has AVX-512 and the CPU the VNNI extension (the
    /// 8/4-bit formats' integer dot products; like VBMI, used by every AVX-512 path).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512_vnni(self) -> Option<x86_512::Avx512Vnni> {
        self.avx512f().and_then(x86_512::Avx512F::vnni)
    }

    /// The AVX512-BF16 proof, when this path has one.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512_bf16(self) -> Option<x86_bf16::Avx512Bf16> {
        match self.0 {
            Path::Avx512Bf16(t) => Some(t),
            Path::AmxBf16(t) => Some(t.avx512_bf16()),
            _ => None,
        }
    }

    /// The AMX-BF16 proof (with the OS's tile permission), when this path has one.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn amx_bf16(self) -> Option<x86_amx::AmxBf16> {
        match self.0 {
            Path::AmxBf16(t) => Some(t),
            _ => None,
        }
    }

    /// The AVX-512F path, from its proof token (for kernels that hold the token, not the
    /// `Isa`).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn avx512f_path(t: x86_512::Avx512F) -> Isa {
        Isa(Path::Avx512F(t))
    }

    /// The next path down (dropping one feature), `None` below the portable one.
    fn narrower(self) -> Option<Isa> {
        match self.0 {
            Path::Portable => None,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Fma(_) => Some(Isa::portable()),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2FmaF16c(t) => Some(Isa(Path::Avx2Fma(t.avx2_fma()))),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512F(t) => Some(Isa(Path::Avx2FmaF16c(t.avx2_fma_f16c()))),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16(t) => Some(Isa(Path::Avx512F(t.avx512f()))),
            #[cfg(target_arch = "x86_64")]
            Path::AmxBf16(t) => Some(Isa(Path::Avx512Bf16(t.avx512_bf16()))),
        }
    }
}

/// Asks the CPU; [`Isa::detect`] caches the answer.
fn detect_uncached() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = x86::Avx2Fma::detect() {
        return Isa(match avx2.with_f16c() {
            Some(t) => match x86_512::Avx512F::detect(t) {
                Some(f) => match x86_bf16::Avx512Bf16::detect(f) {
                    Some(b) => match x86_amx::AmxBf16::detect(b) {
                        Some(a) => Path::AmxBf16(a),
                        None => Path::Avx512Bf16(b),
                    },
                    None => Path::Avx512F(f),
                },
                None => Path::Avx2FmaF16c(t),
            },
            None => Path::Avx2Fma(avx2),
        });
    }
    Isa::portable()
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Isa({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_starts_detected_and_ends_portable() {
        let all = Isa::supported();
        println!("supported: {all:?}");
        assert_eq!(all.first(), Some(&Isa::detect()));
        assert_eq!(all.last(), Some(&Isa::portable()));
        assert!(all.iter().rev().skip(1).all(|i| i.has_avx2_fma()));
        assert_eq!(Isa::detect(), Isa::detect());
        assert_eq!(Isa::portable().to_string(), "portable");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn detection_agrees_with_the_cpu() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw");
        let bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
        // The OS's tile permission is part of the path (an old kernel refuses it).
        let amx = x86_amx::cpu_has_amx_bf16() && x86_amx::os_grants_tile_data();
        let want = match (avx2, f16c, avx512, bf16) {
            (false, ..) => "portable",
            (true, false, ..) => "avx2+fma",
            (true, true, false, _) => "avx2+fma+f16c",
            (true, true, true, false) => "avx512f",
            (true, true, true, true) if amx => "amx-bf16",
            (true, true, true, true) => "avx512bf16",
        };
        assert_eq!(Isa::detect().name(), want);
    }
}
