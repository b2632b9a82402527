# build_lib: CMake build of cuda_lib/ (libet.so + et_infer); the CUDA backend when lib.cuda allows.
rule build_lib:
    input:
        sources=sorted(
            str(p) for p in Path(workflow.basedir, "cuda_lib").rglob("*")
            if p.is_file() and p.suffix in {".h", ".hpp", ".c", ".cpp", ".cu", ".cuh", ".txt", ".cmake", ".map"}
            and not p.relative_to(workflow.basedir).parts[1].startswith("build")
        ),
    output:
        lib=f"{R}/build_lib/libet.so",
        exe=f"{R}/build_lib/et_infer",
        metrics=f"{R}/build_lib/metrics.json",
    params:
        cfg=stage_params("lib"),
    log:
        f"{LOGS}/build_lib.log",
    benchmark:
        f"{BENCH}/build_lib.tsv"
    threads: 2
    shell:
        "{PY}.build_lib --run-dir {R} --params {params.cfg:q} --threads {threads}"
        " --out-dir {R}/build_lib 2>&1 | tee {log}"


REPORT_INPUTS["build_lib"] = rules.build_lib.output.metrics
