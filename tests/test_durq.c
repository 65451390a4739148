#include <cmocka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
int
main(void)
{
	return 0;
}
