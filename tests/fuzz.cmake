# The wire codec's fuzz target, linked to a plain main() instead of
# libFuzzer, replays every input of the seed corpus (tests/corpus/wire) on
# every test run: the valid frames of each op, the malformed ones, JSON
# texts, and every input that ever crashed the fuzzer (fuzz/run.sh). It
# links the codec alone (qpproto and msgpack-c, nothing from lib/), as the
# fuzzer does.
add_executable(fuzz_wire_replay ${CMAKE_SOURCE_DIR}/fuzz/fuzz_wire.c
                                ${CMAKE_SOURCE_DIR}/fuzz/replay.c)
target_link_libraries(fuzz_wire_replay PRIVATE qpproto msgpackc)
qp_target(fuzz_wire_replay)
add_test(NAME fuzz_wire_corpus
         COMMAND fuzz_wire_replay ${CMAKE_CURRENT_SOURCE_DIR}/corpus/wire)
set_tests_properties(fuzz_wire_corpus PROPERTIES TIMEOUT 300)
