//! The panel-kernel dispatch: which variant [`panel_kernel`] hands out on this CPU, and
//! none under the scalar override (a process-wide switch, hence its own test binary).

mod common;

use common::{cpu_has_avx512, LEGACY};
use embodios_quant::{active_panel_set, force_scalar, panel_kernel, simd_panel_kernels, GgmlType};

#[test]
fn panel_dispatch_follows_the_cpu_and_the_override() {
    force_scalar(false);
    let has512 = cpu_has_avx512();
    for ty in LEGACY {
        let k = panel_kernel(ty).expect("an AVX2 CPU has legacy panels");
        let [v2, v512] = simd_panel_kernels(ty);
        let want = if has512 { v512 } else { v2 };
        assert_eq!(Some(k as usize), want.map(|f| f as usize), "{ty}");
    }
    assert_eq!(
        active_panel_set(),
        if has512 { "avx512-vnni" } else { "avx2" }
    );
    assert!(panel_kernel(GgmlType::F32).is_none());
    force_scalar(true);
    assert!(panel_kernel(GgmlType::Q8_0).is_none());
    assert_eq!(active_panel_set(), "none");
    force_scalar(false);
}
