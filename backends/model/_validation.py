"""What one validation run found, and the checks that can fail.

:func:`secretvault.backends.model.validate.validate` measures; these frozen
records hold its figures side by side -- kernel, replay through the
direct-map model, buddy model -- and derive the verdict.  The checks and
their tolerances are explained in ``validate.py``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """One allocation phase: kernel, replay and buddy model side by side."""

    name: str
    pages: int
    kernel_l2: int  # splits the kernel made during the phase's faults
    kernel_l3: int
    predicted_l2: int  # replay of the phase's frames (upper bound)
    predicted_l3: int
    split_confirmed: int  # first touches where both split
    presplit: int  # first touches the model splits, the kernel found split already
    unexpected: int  # kernel splits the model does not predict
    unexpected_l3: int  # ... level-3 ones
    kernel_distinct_2m: int
    kernel_distinct_1g: int
    model_distinct_2m: int  # the buddy model, same sequence
    model_l2: int
    # median pages in the 2 MiB regions the kernel split during the phase
    # (whole before it, like every region of the model's fresh machine),
    # the last two left out: the run stops before filling them
    kernel_pages_per_fresh_region: float | None

    @property
    def kernel_pages_per_region(self) -> float:
        return self.pages / self.kernel_distinct_2m if self.kernel_distinct_2m else 0.0

    @property
    def model_pages_per_region(self) -> float:
        return self.pages / self.model_distinct_2m if self.model_distinct_2m else 0.0

    @property
    def kernel_pages_per_split(self) -> float | None:
        return self.pages / self.kernel_l2 if self.kernel_l2 else None

    @property
    def model_pages_per_split(self) -> float | None:
        return self.pages / self.model_l2 if self.model_l2 else None


@dataclass(frozen=True, slots=True)
class ValidationResult:
    kernel: str
    phases: tuple[PhaseResult, ...]
    kernel_l2_total: int  # over the whole run, windows between faults included
    kernel_l3_total: int
    directmap_4k_start: int  # bytes
    directmap_2m_start: int
    directmap_1g_start: int
    layout_4k: int  # the replay's boot layout of the same RAM, bytes
    layout_2m: int
    layout_1g: int
    presplit_budget: int  # 2 MiB granules mapped at 4 KiB when the run began
    known_whole_first_touches: int
    known_whole_split: int
    noise_splits: int  # level-2 splits seen in the idle windows
    noise_seconds: float
    run_seconds: float
    tolerance: int

    @property
    def kernel_l2(self) -> int:
        return sum(p.kernel_l2 for p in self.phases)

    @property
    def predicted_l2(self) -> int:
        return sum(p.predicted_l2 for p in self.phases)

    @property
    def predicted_l2_lower(self) -> int:
        return max(0, self.predicted_l2 - self.presplit_budget)

    @property
    def kernel_l3(self) -> int:
        return sum(p.kernel_l3 for p in self.phases)

    @property
    def predicted_l3(self) -> int:
        return sum(p.predicted_l3 for p in self.phases)

    @property
    def l3_presplit_budget(self) -> int:
        """1 GiB entries the replay's boot layout has and the machine had lost
        when the run began: first touches there may find the GiB split."""
        return max(0, (self.layout_1g - self.directmap_1g_start) >> 30)

    @property
    def unexpected(self) -> int:
        return sum(p.unexpected for p in self.phases)

    @property
    def unexpected_l3(self) -> int:
        return sum(p.unexpected_l3 for p in self.phases)

    @property
    def presplit(self) -> int:
        return sum(p.presplit for p in self.phases)

    @property
    def split_confirmed(self) -> int:
        """First touches of whole regions the kernel split: the rule exercised."""
        return sum(p.split_confirmed for p in self.phases)

    @property
    def checks(self) -> tuple[tuple[str, bool], ...]:
        return (
            (
                f"unexpected splits {self.unexpected} <= tolerance {self.tolerance}",
                self.unexpected <= self.tolerance,
            ),
            (
                f"unexpected level-3 splits {self.unexpected_l3} <= tolerance {self.tolerance}",
                self.unexpected_l3 <= self.tolerance,
            ),
            (
                # two-sided: a replayed level-3 split the kernel did not make
                # needs a GiB the machine had split before the run
                f"kernel level-3 {self.kernel_l3} within [{self.predicted_l3} - "
                f"{self.l3_presplit_budget}, {self.predicted_l3} + {self.tolerance}]",
                self.predicted_l3 - self.l3_presplit_budget
                <= self.kernel_l3
                <= self.predicted_l3 + self.tolerance,
            ),
            (
                f"pre-split first touches {self.presplit} <= budget {self.presplit_budget}",
                self.presplit <= self.presplit_budget,
            ),
            (
                f"known-whole regions split {self.known_whole_split} of "
                f"{self.known_whole_first_touches} (tolerance {self.tolerance})",
                self.known_whole_first_touches - self.known_whole_split <= self.tolerance,
            ),
            (
                f"kernel {self.kernel_l2} within [{self.predicted_l2_lower}, "
                f"{self.predicted_l2} + {self.tolerance}]",
                self.predicted_l2_lower <= self.kernel_l2 <= self.predicted_l2 + self.tolerance,
            ),
        )

    @property
    def agrees(self) -> bool:
        return all(ok for _, ok in self.checks)

    def __str__(self) -> str:
        mib = 1 << 20
        lines = [
            f"direct-map model vs kernel {self.kernel} "
            f"({self.run_seconds:.2f} s run, noise {self.noise_splits} level-2 splits "
            f"in {self.noise_seconds:.1f} s idle, tolerance {self.tolerance})",
            f"  kernel at start: DirectMap4k {self.directmap_4k_start // mib} MiB, "
            f"2M {self.directmap_2m_start // mib} MiB, 1G {self.directmap_1g_start // mib} MiB; "
            f"boot layout of its RAM: 4k {self.layout_4k // mib} MiB, "
            f"2M {self.layout_2m // mib} MiB, 1G {self.layout_1g // mib} MiB",
        ]
        for p in self.phases:
            kps = p.kernel_pages_per_split
            mps = p.model_pages_per_split
            lines += [
                f"  {p.name}: {p.pages} pages",
                f"    level-2 splits: kernel {p.kernel_l2}, replay {p.predicted_l2} "
                f"(confirmed {p.split_confirmed}, split before the run {p.presplit}, "
                f"unexpected {p.unexpected}); level-3: kernel {p.kernel_l3}, "
                f"replay {p.predicted_l3} (unexpected {p.unexpected_l3})",
                f"    distinct 2 MiB regions: kernel {p.kernel_distinct_2m} "
                f"({p.kernel_pages_per_region:.0f} pages/region), buddy model "
                f"{p.model_distinct_2m} ({p.model_pages_per_region:.0f} pages/region, "
                f"{p.model_distinct_2m - p.kernel_distinct_2m:+d}); "
                f"pages/split: kernel {'-' if kps is None else f'{kps:.0f}'}, "
                f"model {'-' if mps is None else f'{mps:.0f}'}",
                f"    pages per region the kernel split in this run (median, "
                f"{max(0, p.split_confirmed - 2)} regions): "
                + (
                    "-"
                    if p.kernel_pages_per_fresh_region is None
                    else f"{p.kernel_pages_per_fresh_region:.0f} against the model's "
                    f"{p.model_pages_per_region:.0f}"
                ),
            ]
        lines.append(
            f"  totals: kernel {self.kernel_l2} level-2 splits during faults "
            f"({self.kernel_l2_total} over the whole run), replay "
            f"[{self.predicted_l2_lower}, {self.predicted_l2}]"
        )
        lines += [f"  [{'ok' if ok else 'FAIL'}] {text}" for text, ok in self.checks]
        return "\n".join(lines)
