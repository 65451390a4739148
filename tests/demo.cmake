# The demo's tests: scripts/demo.sh (the README's main command) on the
# built binaries, docker-compose config of docker/compose.yaml, and the
# compose topology across network namespaces (docker/demo.sh), which exits
# 77 where namespaces cannot be made.
set_tests_properties(it_demo it_docker_compose PROPERTIES LABELS demo)
set_tests_properties(it_docker_compose PROPERTIES SKIP_RETURN_CODE 77)
set_tests_properties(it_docker_netns PROPERTIES LABELS "demo;netns"
  SKIP_RETURN_CODE 77)
# The image and the compose demo on a real Docker engine: long (a build of
# the image when the sources changed), alone (it builds and runs
# containers), skipped where no engine can start.
set_tests_properties(it_docker_real PROPERTIES LABELS "demo;docker"
  SKIP_RETURN_CODE 77 TIMEOUT 1200 RUN_SERIAL TRUE)
