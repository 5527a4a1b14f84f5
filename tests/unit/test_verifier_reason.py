"""The verifier's reason for a refusal, as one line, from its log (lines as kernels print them)."""

from otel_kafka_ebpf.capture.libbpf import verifier_reason


def test_reason_that_starts_with_a_register_is_found():
    # Debian 6.1.176 refusing sys_exit (the kernel matrix): the reason names a register
    log = ("0: R1=ctx() R10=fp0\n4180: (85) call bpf_ringbuf_output#130\n"
           "R3 unbounded memory access, use 'var &= const' or 'if (var < const)'\n"
           "processed 4181 insns (limit 1000000) max_states_per_insn 4 total_states 190 peak_states 190 mark_read 9\n")
    assert verifier_reason(log) == "R3 unbounded memory access, use 'var &= const' or 'if (var < const)'"


def test_callback_and_stack_reasons():
    assert verifier_reason("4256: (95) exit\nAt callback return the register R0 has smin=0 smax=4294967295 "
                           "should have been in [0, 1]\nprocessed 1477 insns\n").startswith("At callback return")
    assert verifier_reason("combined stack size of 4 calls is 624. Too large\n"
                           "verification time 9 usec\n") == "combined stack size of 4 calls is 624. Too large"


def test_an_accepted_programs_statistics_are_no_reason():
    assert verifier_reason("verification time 32971 usec\nstack depth 96+96+24\n"
                           "processed 33339 insns (limit 1000000) max_states_per_insn 4\n") is None
